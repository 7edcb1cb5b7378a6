//! The message tree of a conversation. Every message has a parent: a user message follows
//! the message it was written after (`null` for a first message), a reply answers its user
//! message. Regenerating adds a reply under the same user message, editing adds a user
//! message under the same parent: branches share their prefix, nothing is copied.
//!
//! The conversation's *active leaf* is where its active path ends. The path is the leaf's
//! ancestors; a branch that is switched to shows its newest descendants.
//!
//! Pure functions over the nodes, shared by the event store (which reads them from events),
//! the read model and the tests.

use std::collections::HashMap;

use uuid::Uuid;

/// A message as the tree sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeNode {
    /// The message (or reply) id.
    pub id: Uuid,
    /// The message it follows or answers (`None`: a first message).
    pub parent: Option<Uuid>,
    /// The conversation version that added it: orders siblings, oldest first.
    pub sequence: i64,
}

/// How an event names a message's parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentLink {
    /// Said explicitly (`None`: a first message).
    Explicit(Option<Uuid>),
    /// Not said: a `UserMessagePosted` older than version 1.2, written when conversations
    /// had no branches, follows the message recorded just before it.
    Previous,
}

/// Resolves [`ParentLink::Previous`] links of `records` (in conversation order) into nodes.
pub fn link(records: impl IntoIterator<Item = (Uuid, ParentLink, i64)>) -> Vec<TreeNode> {
    let mut nodes: Vec<TreeNode> = Vec::new();
    for (id, link, sequence) in records {
        let parent = match link {
            ParentLink::Explicit(parent) => parent,
            ParentLink::Previous => nodes.last().map(|n| n.id),
        };
        nodes.push(TreeNode { id, parent, sequence });
    }
    nodes
}

/// The newest message at the end of the branch under `from`: from `from`, repeatedly its
/// newest child, until a message has none. `None` when `from` is not in `nodes`.
pub fn latest_leaf(nodes: &[TreeNode], from: Uuid) -> Option<Uuid> {
    let mut newest_child: HashMap<Uuid, &TreeNode> = HashMap::new();
    let mut known = false;
    for node in nodes {
        known |= node.id == from;
        if let Some(parent) = node.parent {
            let slot = newest_child.entry(parent).or_insert(node);
            if node.sequence > slot.sequence {
                *slot = node;
            }
        }
    }
    if !known {
        return None;
    }
    let mut at = from;
    // Bounded by the node count: a malformed cycle cannot loop forever.
    for _ in 0..nodes.len() {
        match newest_child.get(&at) {
            Some(child) => at = child.id,
            None => break,
        }
    }
    Some(at)
}

/// The path from the first message to `leaf`, first message first. Empty when `leaf` is
/// not in `nodes`.
pub fn path_to(nodes: &[TreeNode], leaf: Uuid) -> Vec<Uuid> {
    let by_id: HashMap<Uuid, &TreeNode> = nodes.iter().map(|n| (n.id, n)).collect();
    let mut path = Vec::new();
    let mut at = by_id.get(&leaf).copied();
    while let Some(node) = at {
        if path.len() > nodes.len() {
            break;
        }
        path.push(node.id);
        at = node.parent.and_then(|p| by_id.get(&p).copied());
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// m1 → r1 → m2 → r2, then r1' regenerated under m1, then m2' an edit of m2.
    fn tree() -> Vec<TreeNode> {
        link([
            (id(1), ParentLink::Previous, 1),
            (id(2), ParentLink::Explicit(Some(id(1))), 2),
            (id(3), ParentLink::Previous, 3),
            (id(4), ParentLink::Explicit(Some(id(3))), 4),
            (id(5), ParentLink::Explicit(Some(id(1))), 5),
            (id(6), ParentLink::Explicit(Some(id(2))), 6),
        ])
    }

    #[test]
    fn an_unsaid_parent_is_the_message_recorded_before() {
        let nodes = tree();
        assert_eq!(nodes[0].parent, None);
        assert_eq!(nodes[2].parent, Some(id(2)));
    }

    #[test]
    fn a_branch_ends_at_its_newest_descendants() {
        let nodes = tree();
        assert_eq!(latest_leaf(&nodes, id(1)), Some(id(5)));
        assert_eq!(latest_leaf(&nodes, id(2)), Some(id(6)));
        assert_eq!(latest_leaf(&nodes, id(3)), Some(id(4)));
        assert_eq!(latest_leaf(&nodes, id(4)), Some(id(4)));
        assert_eq!(latest_leaf(&nodes, id(99)), None);
    }

    #[test]
    fn a_path_runs_from_the_first_message_to_the_leaf() {
        let nodes = tree();
        assert_eq!(path_to(&nodes, id(4)), [id(1), id(2), id(3), id(4)]);
        assert_eq!(path_to(&nodes, id(6)), [id(1), id(2), id(6)]);
        assert_eq!(path_to(&nodes, id(5)), [id(1), id(5)]);
        assert!(path_to(&nodes, id(99)).is_empty());
    }
}
