//! Pages of tenants ordered by identifier, for ListTenants.

use std::{collections::BinaryHeap, sync::Arc};

use super::Store;
use crate::core::tenant::{TenantRecord, TenantState};

impl Store {
    /// A page of tenants ordered by identifier, after `after`, in `states`
    /// (all when empty). Returns the page and whether more follow.
    pub fn list(
        &self,
        after: &str,
        states: &[TenantState],
        page_size: usize,
    ) -> (Vec<Arc<TenantRecord>>, bool) {
        // A bounded max-heap keeps the page_size smallest identifiers in
        // one pass: O(n log k), no full sort of every tenant per page.
        let mut heap: BinaryHeap<HeapItem> = BinaryHeap::with_capacity(page_size + 1);
        let mut more = false;
        for r in self.tenants.iter() {
            if r.key().as_str() <= after || (!states.is_empty() && !states.contains(&r.state)) {
                continue;
            }
            if heap.len() < page_size {
                heap.push(HeapItem(Arc::clone(r.value())));
            } else if let Some(top) = heap.peek() {
                more = true;
                if r.key() < &top.0.context_identifier {
                    heap.pop();
                    heap.push(HeapItem(Arc::clone(r.value())));
                }
            }
        }
        let page = heap.into_sorted_vec().into_iter().map(|h| h.0).collect();
        (page, more)
    }
}

struct HeapItem(Arc<TenantRecord>);
impl PartialEq for HeapItem {
    fn eq(&self, o: &Self) -> bool {
        self.0.context_identifier == o.0.context_identifier
    }
}
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for HeapItem {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.context_identifier.cmp(&o.0.context_identifier)
    }
}
