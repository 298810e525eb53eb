"""Rules in the shape kube-proxy writes them, and the matching Kubernetes manifests, for N
ClusterIP Services (bench/lb.sh, bench/services-scale.sh):

    python3 bench/kube_proxy_gen.py KIND N BACKENDS OUT [ENDPOINTS_PER_SERVICE]

KIND: ipt-full | ipt-change | ipt-revert (iptables-restore input: the whole nat table, then
kube-proxy's full sync with Service 0's last endpoint moved and moved back), nft-full |
nft-change | nft-revert (nft -f input: kube-proxy's nftables table, then its incremental
transaction for the same move), yaml-full | yaml-change | yaml-revert (Services and
EndpointSlices for ciliate apply). BACKENDS: comma-separated addresses of the measured Service
(the last one); the others get addresses of their own, ENDPOINTS_PER_SERVICE each (default 3).
"""
import base64, hashlib, sys

kind, n, backends, out = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
per = int(sys.argv[5]) if len(sys.argv) > 5 else 3
CHANGED_TO = "10.99.0.1"  # service 0's last backend is swapped for this

def vip(i):  # the measured Service is the last one
    return f"10.96.{i // 250}.{i % 250 + 1}"

def eps(i):
    if i == n - 1:
        return list(backends)
    # Other Services get backends of their own, as in a cluster (never contacted).
    return [f"10.{100 + (k // 250) // 256}.{(k // 250) % 256}.{k % 250 + 1}" for k in range(per * i, per * i + per)]

def h(s, length=16):  # kube-proxy: base32(sha256(...)) truncated
    return base64.b32encode(hashlib.sha256(s.encode()).digest()).decode()[:length]

def spn(i):
    return f"default/svc-{i}:http"

def svc_eps(i, variant):
    e = eps(i)
    if i == 0 and variant == "changed":
        e = e[:-1] + [CHANGED_TO]
    return e

# ---- iptables (nat table), kube-proxy iptables mode ----
def ipt_chains_rules(variant):
    chains, rules = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"], []
    rules += [
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
    ]
    svc_rules, per_svc = [], []
    for i in range(n):
        name = spn(i)
        svc = "KUBE-SVC-" + h(name + "tcp")
        chains.append(svc)
        svc_rules.append(f'-A KUBE-SERVICES -d {vip(i)}/32 -p tcp -m comment --comment "{name} cluster IP" -m tcp --dport 80 -j {svc}')
        e = svc_eps(i, variant)
        for j, ep in enumerate(e):
            sep = "KUBE-SEP-" + h(name + "tcp" + f"{ep}:5001")
            chains.append(sep)
            left = len(e) - j
            stat = f" -m statistic --mode random --probability {1.0 / left:.11f}" if left > 1 else ""
            per_svc.append(f'-A {svc} -m comment --comment "{name} -> {ep}:5001"{stat} -j {sep}')
            per_svc.append(f'-A {sep} -s {ep}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ')
            per_svc.append(f'-A {sep} -p tcp -m comment --comment "{name}" -m tcp -j DNAT --to-destination {ep}:5001')
    svc_rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    return chains, rules + svc_rules + per_svc

def ipt_full():
    chains, rules = ipt_chains_rules("orig")
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]"]
    lines += [f":{c} - [0:0]" for c in chains]
    lines += [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    ]
    return lines + rules + ["COMMIT"]

def ipt_sync(variant):
    # kube-proxy's full sync: `iptables-restore --noflush` of every chain it owns (declaring a
    # chain flushes it), the stale ones declared too, then deleted with -X.
    chains, rules = ipt_chains_rules(variant)
    old = svc_eps(0, "orig" if variant == "changed" else "changed")[-1]
    stale = "KUBE-SEP-" + h(spn(0) + "tcp" + f"{old}:5001")
    return ["*nat"] + [f":{c} - [0:0]" for c in chains + [stale]] + rules + [f"-X {stale}", "COMMIT"]

# ---- nftables, kube-proxy nftables mode ----
T = "ip kube-proxy"

def nft_names(i, ep):
    name = f"default/svc-{i}/tcp/http"
    return (f"service-{h(name, 8)}-{name}", f"endpoint-{h(name + ep, 8)}-{name}__{ep}/5001")

def nft_service_rule(i, e):
    svc = nft_names(i, "")[0]
    vm = " , ".join(f"{j} : goto {nft_names(i, ep)[1]}" for j, ep in enumerate(e))
    return f"add rule {T} {svc} numgen random mod {len(e)} vmap {{ {vm} }}"

def nft_endpoint(i, ep):
    c = nft_names(i, ep)[1]
    return [f"add chain {T} {c}",
            f"add rule {T} {c} ip saddr {ep} jump mark-for-masquerade",
            f"add rule {T} {c} meta l4proto tcp dnat to {ep}:5001"]

def nft_full():
    L = [f'add table {T} {{ comment "rules for kube-proxy" ; }}',
         f"add chain {T} mark-for-masquerade",
         f"add rule {T} mark-for-masquerade mark set mark or 0x4000",
         f"add chain {T} masquerading",
         f"add rule {T} masquerading mark and 0x4000 == 0 return",
         f"add rule {T} masquerading mark set mark xor 0x4000",
         f"add rule {T} masquerading masquerade fully-random",
         f'add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}',
         f"add chain {T} services",
         f"add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips",
         f"add chain {T} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}",
         f"add rule {T} nat-prerouting jump services",
         f"add chain {T} nat-output {{ type nat hook output priority -100 ; }}",
         f"add rule {T} nat-output jump services",
         f"add chain {T} nat-postrouting {{ type nat hook postrouting priority srcnat ; }}",
         f"add rule {T} nat-postrouting jump masquerading"]
    for i in range(n):
        e = eps(i)
        svc = nft_names(i, "")[0]
        L.append(f"add chain {T} {svc}")
        for ep in e:
            L += nft_endpoint(i, ep)
        L.append(nft_service_rule(i, e))
        L.append(f"add element {T} service-ips {{ {vip(i)} . tcp . 80 : goto {svc} }}")
    return L

def nft_change(variant):
    # kube-proxy's incremental sync: the new endpoint chain, the service chain rewritten, the
    # stale endpoint chain flushed and deleted; one transaction.
    new, old = svc_eps(0, variant), svc_eps(0, "orig" if variant == "changed" else "changed")
    svc = nft_names(0, "")[0]
    stale = nft_names(0, old[-1])[1]
    return (nft_endpoint(0, new[-1]) + [f"flush chain {T} {svc}", nft_service_rule(0, new),
            f"flush chain {T} {stale}", f"delete chain {T} {stale}"])

# ---- Kubernetes manifests for ciliate apply ----
def service(i):
    return (f"apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: default\nspec:\n"
            f"  clusterIP: {vip(i)}\n  ports:\n  - name: http\n    port: 80\n    targetPort: 5001\n    protocol: TCP\n")

def slice_(i, e):
    y = (f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-abc\n  namespace: default\n"
         f"  labels:\n    kubernetes.io/service-name: svc-{i}\naddressType: IPv4\nports:\n- name: http\n  port: 5001\n  protocol: TCP\nendpoints:\n")
    for ep in e:
        y += f"- addresses: [\"{ep}\"]\n  conditions:\n    ready: true\n    serving: true\n    terminating: false\n"
    return y

def yaml_full():
    return ["---\n".join(service(i) + "---\n" + slice_(i, eps(i)) for i in range(n))]

out_lines = {
    "ipt-full": ipt_full,
    "ipt-change": lambda: ipt_sync("changed"),
    "ipt-revert": lambda: ipt_sync("orig"),
    "nft-full": nft_full,
    "nft-change": lambda: nft_change("changed"),
    "nft-revert": lambda: nft_change("orig"),
    "yaml-full": yaml_full,
    "yaml-change": lambda: [slice_(0, svc_eps(0, "changed"))],
    "yaml-revert": lambda: [slice_(0, svc_eps(0, "orig"))],
}[kind]()
with open(out, "w") as f:
    f.write("\n".join(out_lines) + "\n")
