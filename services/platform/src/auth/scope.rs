//! Scopes, and which one each RPC needs.

/// What a key may do. `admin:write` implies `admin:read` and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    IngestWrite,
    QueryRead,
    AdminRead,
    AdminWrite,
    SubscriptionsPull,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::IngestWrite,
        Scope::QueryRead,
        Scope::AdminRead,
        Scope::AdminWrite,
        Scope::SubscriptionsPull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::IngestWrite => "ingest:write",
            Scope::QueryRead => "query:read",
            Scope::AdminRead => "admin:read",
            Scope::AdminWrite => "admin:write",
            Scope::SubscriptionsPull => "subscriptions:pull",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    /// Whether a key holding `self` may call what needs `needed`.
    pub fn grants(self, needed: Scope) -> bool {
        self == needed || (self == Scope::AdminWrite && needed == Scope::AdminRead)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scope a call needs, from its gRPC service and method. `None`: a
/// method of no Tributary service (any valid key may try it; tonic answers
/// UNIMPLEMENTED). AdminService methods that only read (`Get…`, `List…`,
/// `Describe…`) need `admin:read`; every other one `admin:write`, so a new
/// admin RPC is write-protected until it is named a reader.
pub fn required(service: &str, method: &str) -> Option<Scope> {
    match service {
        "tributary.v1.IngestService" => Some(Scope::IngestWrite),
        "tributary.v1.QueryService" => Some(Scope::QueryRead),
        "tributary.v1.SubscriberService" => Some(Scope::SubscriptionsPull),
        "tributary.v1.AdminService" => {
            let reads = ["Get", "List", "Describe"].iter().any(|p| {
                method
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
            });
            Some(if reads {
                Scope::AdminRead
            } else {
                Scope::AdminWrite
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_admin_write_implies_read() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
            assert!(s.grants(s));
        }
        assert!(Scope::AdminWrite.grants(Scope::AdminRead));
        assert!(!Scope::AdminRead.grants(Scope::AdminWrite));
        assert!(!Scope::AdminWrite.grants(Scope::IngestWrite));
        assert!(!Scope::AdminWrite.grants(Scope::QueryRead));
        assert_eq!(Scope::parse("admin"), None);
    }

    #[test]
    fn every_admin_method_needs_a_scope_and_writes_need_write() {
        let methods = crate::grpc::methods_of("tributary.v1.AdminService");
        assert!(methods.len() > 10);
        for (service, method) in &methods {
            let scope = required(service, method);
            let reads = method.starts_with("List")
                || method.starts_with("Get")
                || method.starts_with("Describe");
            assert_eq!(
                scope,
                Some(if reads {
                    Scope::AdminRead
                } else {
                    Scope::AdminWrite
                }),
                "{method}"
            );
        }
        assert_eq!(
            required("tributary.v1.AdminService", "ResetOffsets"),
            Some(Scope::AdminWrite)
        );
        // Erasure deletes data: a writer's call.
        assert_eq!(
            required("tributary.v1.AdminService", "EraseUser"),
            Some(Scope::AdminWrite)
        );
        assert!(methods.iter().any(|(_, m)| m == "EraseUser"));
        assert_eq!(
            required("tributary.v1.AdminService", "Getaway"),
            Some(Scope::AdminWrite)
        );
        assert_eq!(
            required("tributary.v1.IngestService", "Publish"),
            Some(Scope::IngestWrite)
        );
        assert_eq!(
            required("tributary.v1.QueryService", "TailEvents"),
            Some(Scope::QueryRead)
        );
        assert_eq!(required("grpc.health.v1.Health", "Check"), None);
    }
}
