//! `POST /v1/manifests` and `POST /v1/policies/validate`: one batch of documents, dispatched by
//! kind to the policy store (NetworkPolicy, CiliumNetworkPolicy,
//! CiliumClusterwideNetworkPolicy) and the Service store (everything else, Namespaces too,
//! whose labels then go to the policy store), all or nothing.
//!
//! The policy part is checked and prepared first (holding the policy store's change lock),
//! then the Services are applied, then the policies committed: a batch where either part is
//! invalid applies nothing and answers the problems of both. Once policies changed, every
//! endpoint's policy is rewritten before the answer, so that `ciliate policy import`
//! returning means the policy is in force.

use std::borrow::Cow;
use std::time::Instant;

use ciliate_model::manifest::raw::{decode_all_raw, RawApplyRequest, Streamed};
use ciliate_model::manifest::{
    decode_all, identify, report, ApplyDocument, ApplyRequest, ApplyResult, Decoded, ManifestError,
};
use ciliate_model::policy_api::PolicyValidation;

use crate::endpoints::EndpointManager;
use crate::policy::{self, is_policy_document, PolicyError, PolicyManager};
use crate::services::{ServiceError, ServiceManager, POLL_INTERVAL};
use crate::state::StateError;

/// Why a batch was refused. Nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Documents are invalid.
    #[error("{}", report(.0, "nothing was applied"))]
    Invalid(Vec<ManifestError>),
    /// The Services could not be applied.
    #[error(transparent)]
    Services(#[from] ServiceError),
    /// The policies could not be persisted (the Services of the batch, if any, were).
    #[error("{0}; the policies of the batch were not applied, retry once the state directory is writable")]
    State(#[source] StateError),
}

impl ApplyError {
    /// The stable `kind` of the API error body.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Services(e) => e.kind(),
            Self::State(_) => "state",
        }
    }
}

/// Splits a batch into its policy documents and the others, keeping their order.
pub fn split(docs: &[ApplyDocument]) -> (Vec<ApplyDocument>, Vec<ApplyDocument>) {
    docs.iter()
        .cloned()
        .partition(|d| is_policy_document(&d.object))
}

/// The problems of non-policy documents, without applying them.
fn check_others(docs: &[ApplyDocument], delete: bool) -> Vec<ManifestError> {
    if delete {
        docs.iter()
            .filter_map(|d| identify(d).err())
            .flatten()
            .collect()
    } else {
        decode_all(docs).err().unwrap_or_default()
    }
}

/// Applies (or deletes) a batch of Services and policies, all or nothing.
pub fn apply(
    services: &ServiceManager,
    policies: &PolicyManager,
    endpoints: &EndpointManager,
    req: &ApplyRequest,
) -> Result<ApplyResult, ApplyError> {
    if req.documents.is_empty() {
        return Err(ApplyError::Invalid(vec![ManifestError {
            source: "request".into(),
            index: 0,
            object: String::new(),
            path: "documents".into(),
            reason: "required value: no documents to apply".into(),
        }]));
    }
    // A batch without policies (10,000 Services, say) goes to the Service store as it is:
    // copying its documents was a tenth of applying it.
    let (policy_docs, other_docs): (Vec<ApplyDocument>, Cow<'_, [ApplyDocument]>) =
        if req.documents.iter().any(|d| is_policy_document(&d.object)) {
            let (p, o) = split(&req.documents);
            (p, Cow::Owned(o))
        } else {
            (Vec::new(), Cow::Borrowed(&req.documents))
        };
    let prepared = if policy_docs.is_empty() {
        None
    } else {
        match policies.prepare(&policy_docs, req.delete) {
            Ok(p) => Some(p),
            Err(mut errors) => {
                errors.extend(check_others(&other_docs, req.delete));
                errors.sort_by(|a, b| (&a.source, a.index).cmp(&(&b.source, b.index)));
                return Err(ApplyError::Invalid(errors));
            }
        }
    };
    let result = if other_docs.is_empty() {
        ApplyResult::default()
    } else {
        services.apply_documents_of(&other_docs, req.delete)?
    };
    finish(services, policies, endpoints, result, prepared)
}

/// [`apply`] of a request as it was received. A batch of valid Services, EndpointSlices,
/// Endpoints and Namespaces is decoded straight from its text (most of the agent's time for
/// 10,000 Services went into JSON values of every document); anything else (a delete, a
/// policy, any problem) is read into values and takes [`apply`], which answers as always.
pub fn apply_raw(
    services: &ServiceManager,
    policies: &PolicyManager,
    endpoints: &EndpointManager,
    req: &RawApplyRequest,
) -> Result<ApplyResult, ApplyError> {
    let started = Instant::now();
    let decoded = if req.delete {
        None
    } else {
        decode_all_raw(&req.documents)
    };
    let request = || req.to_request();
    apply_raw_decoded(
        services, policies, endpoints, decoded, None, request, started,
    )
}

/// [`apply_raw`] of a batch whose objects were decoded already (`decoded`: `None` for a
/// delete, or where they could not all be, see [`decode_all_raw`]), as the streamed form does
/// while the body arrives; `texts`: the streamed batch they are (their objects' text is
/// journaled as it came); `request`: the batch read into values, for every other case;
/// `started`: when the agent's own part began (the log's `elapsed_us`).
pub fn apply_raw_decoded(
    services: &ServiceManager,
    policies: &PolicyManager,
    endpoints: &EndpointManager,
    decoded: Option<Vec<Decoded>>,
    texts: Option<&Streamed>,
    request: impl FnOnce() -> Result<ApplyRequest, ManifestError>,
    started: Instant,
) -> Result<ApplyResult, ApplyError> {
    if let Some(decoded) = decoded.filter(|d| !d.is_empty()) {
        let result = services.apply_decoded_from(decoded, texts, started)?;
        return finish(services, policies, endpoints, result, None);
    }
    let req = request().map_err(|e| ApplyError::Invalid(vec![e]))?;
    apply(services, policies, endpoints, &req)
}

/// After the Services of a batch: namespace labels and the batch's policies put in force.
fn finish(
    services: &ServiceManager,
    policies: &PolicyManager,
    endpoints: &EndpointManager,
    mut result: ApplyResult,
    prepared: Option<policy::Prepared<'_>>,
) -> Result<ApplyResult, ApplyError> {
    // Namespace labels are part of pods' identity labels: a change of them is a change of
    // policy, in force before the answer like one.
    let namespaces_changed = policies.set_namespaces(services.namespace_labels());
    let mut reconcile = namespaces_changed;
    let had_policies = prepared.is_some();
    if let Some(prepared) = prepared {
        let committed = policies.commit(prepared).map_err(|e| match e {
            PolicyError::Invalid(errors) => ApplyError::Invalid(errors),
            PolicyError::State(e) => ApplyError::State(e),
        })?;
        result.policies = committed.outcomes;
        result.warnings.extend(committed.warnings);
        reconcile |= committed.changed;
    }
    if reconcile {
        if let Err(e) = endpoints.reconcile_policy() {
            result.warnings.push(format!(
                "the policies are applied but could not be put in force yet: {e}; the \
                 agent retries every {}s",
                POLL_INTERVAL.as_secs()
            ));
        }
    }
    if had_policies || namespaces_changed {
        result.policy_revision = Some(policies.revision().revision);
    }
    Ok(result)
}

/// Checks a batch without applying anything: every error and warning of its policies, and
/// every error of its other documents.
pub fn validate(docs: &[ApplyDocument]) -> PolicyValidation {
    let (policy_docs, other_docs) = split(docs);
    let mut v = if policy_docs.is_empty() {
        PolicyValidation {
            valid: true,
            ..PolicyValidation::default()
        }
    } else {
        policy::validate(&policy_docs)
    };
    match decode_all(&other_docs) {
        Ok(objects) => v.other_objects = objects.len(),
        Err(errors) => {
            v.valid = false;
            v.errors.extend(errors);
        }
    }
    if docs.is_empty() {
        v.valid = false;
        v.errors.push(ManifestError {
            source: "request".into(),
            index: 0,
            object: String::new(),
            path: "documents".into(),
            reason: "required value: no documents to validate".into(),
        });
    }
    v.errors
        .sort_by(|a, b| (&a.source, a.index).cmp(&(&b.source, b.index)));
    v
}
