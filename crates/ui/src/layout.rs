//! Where the boxes go: a deterministic layered layout. Each box gets a layer (its longest
//! path from a box nothing sends to, ignoring edges that close a cycle), so clients stand left
//! of Services and Services left of backends; each namespace is an area holding its boxes in
//! the columns of their layers, a tall column wrapped into several; areas are placed row by
//! row. The same graph always gets the same drawing, and 1,000 boxes stay readable because
//! no column grows past [`ROWS`] boxes, no area past [`COLUMNS`] layers, and rows of areas
//! keep the drawing about 16:10.

use std::collections::{BTreeMap, HashMap};

use crate::graph::{Area, Graph};

/// Box width.
pub const BOX_W: f64 = 190.0;
/// Box height.
pub const BOX_H: f64 = 58.0;
/// Horizontal room between columns (where connections run).
const GAP_X: f64 = 120.0;
/// Vertical room between boxes.
const GAP_Y: f64 = 18.0;
/// Room inside an area around its boxes.
const PAD: f64 = 24.0;
/// Room for the area's title.
const TITLE: f64 = 30.0;
/// Room between areas.
const AREA_GAP: f64 = 40.0;
/// The most boxes in one column of an area; more wrap into another column.
pub const ROWS: usize = 10;
/// Areas are placed left to right until this width (or, for big maps, the width of a 16:10
/// drawing of them all), then on a new row.
pub const MAX_WIDTH: f64 = 2400.0;
/// The most columns of layers in one area; more layers are merged into these.
pub const COLUMNS: usize = 4;

/// Longest-path layers over the graph minus the edges that close a cycle (found by a
/// depth-first search in id order, so deterministic).
pub fn layers(n: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in edges {
        if a != b && a < n && b < n {
            out[a].push(b);
        }
    }
    for o in &mut out {
        o.sort_unstable();
        o.dedup();
    }
    // Iterative DFS: 0 unvisited, 1 on the stack, 2 done. The finishing order reversed is a
    // topological order of the edges that are not back edges.
    let mut state = vec![0u8; n];
    let mut finished = Vec::with_capacity(n);
    let mut forward: Vec<Vec<usize>> = vec![Vec::new(); n];
    for root in 0..n {
        if state[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some(&mut (v, ref mut i)) = stack.last_mut() {
            if let Some(&w) = out[v].get(*i) {
                *i += 1;
                match state[w] {
                    0 => {
                        forward[v].push(w);
                        state[w] = 1;
                        stack.push((w, 0));
                    }
                    2 => forward[v].push(w),
                    // On the stack: a back edge, closing a cycle; left out.
                    _ => {}
                }
            } else {
                state[v] = 2;
                finished.push(v);
                stack.pop();
            }
        }
    }
    let mut layer = vec![0usize; n];
    for &v in finished.iter().rev() {
        for &w in &forward[v] {
            layer[w] = layer[w].max(layer[v] + 1);
        }
    }
    layer
}

/// Gives every node and area of `graph` its place, and the graph its size.
pub fn layout(graph: &mut Graph) {
    let index: HashMap<&str, usize> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let edges: Vec<(usize, usize)> = graph
        .edges
        .iter()
        .filter_map(|e| Some((*index.get(e.from.as_str())?, *index.get(e.to.as_str())?)))
        .collect();
    let layer = layers(graph.nodes.len(), &edges);
    // Namespaces in name order, what is outside every namespace ("") last.
    let mut by_area: BTreeMap<(bool, String), BTreeMap<usize, Vec<usize>>> = BTreeMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        by_area
            .entry((node.namespace.is_empty(), node.namespace.clone()))
            .or_default()
            .entry(layer[i])
            .or_default()
            .push(i);
    }
    // Each area laid out on its own first (its boxes relative to its corner), then the areas
    // placed row by row.
    let mut boxes: Vec<Area> = Vec::with_capacity(by_area.len());
    let mut placed: Vec<Vec<(usize, f64, f64, usize)>> = Vec::with_capacity(by_area.len());
    for ((_, namespace), columns) in by_area {
        // A long chain of calls would give an area one column per layer: merge neighbouring
        // layers into at most COLUMNS, keeping their left-to-right order.
        let distinct = columns.len();
        let mut merged: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
        for (rank, (l, members)) in columns.into_iter().enumerate() {
            let bucket = rank * COLUMNS.min(distinct) / distinct.max(1);
            merged
                .entry(bucket)
                .or_default()
                .extend(members.into_iter().map(|i| (i, l)));
        }
        let mut col_x = PAD;
        let mut tallest = 0usize;
        let mut here = Vec::new();
        for members in merged.into_values() {
            for (k, chunk) in members.chunks(ROWS).enumerate() {
                for (r, &(i, l)) in chunk.iter().enumerate() {
                    let cx = col_x + k as f64 * (BOX_W + GAP_X);
                    let cy = TITLE + PAD + r as f64 * (BOX_H + GAP_Y);
                    here.push((i, cx, cy, l));
                }
                tallest = tallest.max(chunk.len());
            }
            col_x += members.len().div_ceil(ROWS) as f64 * (BOX_W + GAP_X);
        }
        boxes.push(Area {
            namespace,
            x: 0.0,
            y: 0.0,
            w: col_x - GAP_X + PAD,
            h: TITLE + PAD + tallest as f64 * (BOX_H + GAP_Y) - GAP_Y + PAD,
        });
        placed.push(here);
    }
    // Rows about as wide as a 16:10 drawing of everything would be.
    let total: f64 = boxes
        .iter()
        .map(|a| (a.w + AREA_GAP) * (a.h + AREA_GAP))
        .sum();
    let max_width = MAX_WIDTH.max((total * 1.6).sqrt());
    let (mut x, mut y, mut row_h, mut width) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut areas = Vec::with_capacity(boxes.len());
    for (mut area, here) in boxes.into_iter().zip(placed) {
        if x > 0.0 && x + area.w > max_width {
            x = 0.0;
            y += row_h + AREA_GAP;
            row_h = 0.0;
        }
        for (i, cx, cy, l) in here {
            let node = &mut graph.nodes[i];
            node.x = x + cx;
            node.y = y + cy;
            node.w = BOX_W;
            node.h = BOX_H;
            node.layer = l;
        }
        area.x = x;
        area.y = y;
        x += area.w + AREA_GAP;
        width = width.max(x - AREA_GAP);
        row_h = row_h.max(area.h);
        areas.push(area);
    }
    graph.areas = areas;
    graph.width = width;
    graph.height = if graph.nodes.is_empty() {
        0.0
    } else {
        y + row_h
    };
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chains_and_cycles_get_layers() {
        assert_eq!(layers(3, &[(0, 1), (1, 2)]), vec![0, 1, 2]);
        // Client -> Service -> backend, and the client also reaches the backend directly.
        assert_eq!(layers(3, &[(0, 1), (1, 2), (0, 2)]), vec![0, 1, 2]);
        // A cycle is cut where the search closes it.
        assert_eq!(layers(2, &[(0, 1), (1, 0)]), vec![0, 1]);
        assert_eq!(layers(1, &[(0, 0)]), vec![0]);
        assert_eq!(layers(2, &[(0, 7)]), vec![0, 0]);
    }

    proptest! {
        /// Every edge that is not part of a cycle points to a later layer, and layers are
        /// bounded by the number of nodes.
        #[test]
        fn acyclic_edges_go_right(n in 1usize..40, raw in proptest::collection::vec((0usize..40, 0usize..40), 0..120)) {
            let edges: Vec<(usize, usize)> = raw.into_iter().map(|(a, b)| (a % n, b % n)).collect();
            let l = layers(n, &edges);
            prop_assert_eq!(l.len(), n);
            prop_assert!(l.iter().all(|&x| x < n));
            // Forward-only edges (a < b) form a DAG: on such graphs every edge goes right.
            let dag: Vec<(usize, usize)> = edges.iter().copied().filter(|(a, b)| a < b).collect();
            let l = layers(n, &dag);
            for (a, b) in dag {
                prop_assert!(l[a] < l[b], "{a}->{b}: {} !< {}", l[a], l[b]);
            }
        }
    }
}
