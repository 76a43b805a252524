//! The `client_msg_id` a p2p sender puts on each message (`--client-ids`). The server keeps a
//! unique index on (sender, client_msg_id) to refuse resends, and where a new id lands in it
//! decides how many index pages a commit rewrites: ids that grow land at the end of the sender's
//! part, random ones anywhere in it. So the kind of id is part of the load, not a detail.

use std::fmt::Write;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClientIds {
    /// `RUN-CONN-REQ` (decimal): loadgen's own, nearly growing per sender (the default).
    Counter,
    /// What the SDK sends: the wall-clock milliseconds (12 hex digits), then 80 random bits.
    Time,
    /// 128 random bits as 32 hex digits, like a client that sends UUIDs.
    Random,
}

impl ClientIds {
    pub fn parse(v: &str) -> Result<ClientIds, String> {
        match v {
            "counter" => Ok(ClientIds::Counter),
            "time" => Ok(ClientIds::Time),
            "random" => Ok(ClientIds::Random),
            _ => Err("--client-ids: counter, time or random".into()),
        }
    }

    /// Appends the id of connection `conn`'s request `req` in run `run` (unique per run: users
    /// are reused across runs, and a repeated id would be acknowledged as a duplicate).
    pub fn write(self, out: &mut String, run: u64, conn: usize, req: u64, now_ms: u64) {
        // Distinct (conn, req) pairs of a run give distinct inputs: each connection gets its own
        // pseudo-random base, and requests stay far below the 2^64 that could bridge two bases.
        let base = mix(mix(run) ^ conn as u64) ^ req;
        let bits = |salt: u64| mix(base ^ salt);
        let _ = match self {
            ClientIds::Counter => write!(out, "{run}-{conn}-{req}"),
            ClientIds::Time => write!(
                out,
                "{:012x}{:04x}{:016x}",
                now_ms & 0xffff_ffff_ffff,
                bits(1) & 0xffff,
                bits(2)
            ),
            ClientIds::Random => write!(out, "{:016x}{:016x}", bits(1), bits(2)),
        };
    }
}

/// splitmix64's finaliser: distinct inputs give distinct, well-spread outputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: ClientIds, conn: usize, req: u64, now_ms: u64) -> String {
        let mut s = String::new();
        kind.write(&mut s, 1_764_763_200_000, conn, req, now_ms);
        s
    }

    #[test]
    fn parse_names_each_kind_and_refuses_others() {
        assert_eq!(ClientIds::parse("counter"), Ok(ClientIds::Counter));
        assert_eq!(ClientIds::parse("time"), Ok(ClientIds::Time));
        assert_eq!(ClientIds::parse("random"), Ok(ClientIds::Random));
        assert!(ClientIds::parse("uuid").is_err());
    }

    #[test]
    fn counter_ids_name_the_run_connection_and_request() {
        assert_eq!(id(ClientIds::Counter, 3, 17, 0), "1764763200000-3-17");
    }

    #[test]
    fn time_ids_are_the_sdks_format_and_grow_with_the_clock() {
        let a = id(ClientIds::Time, 3, 17, 1_764_763_200_123);
        let b = id(ClientIds::Time, 3, 18, 1_764_763_200_124);
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(u64::from_str_radix(&a[..12], 16), Ok(1_764_763_200_123));
        assert!(a < b);
        // Same millisecond: the random part keeps them apart.
        assert_ne!(id(ClientIds::Time, 3, 17, 5), id(ClientIds::Time, 3, 18, 5));
    }

    #[test]
    fn random_ids_are_distinct_and_do_not_follow_the_request_order() {
        let ids: Vec<String> = (0..1000).map(|r| id(ClientIds::Random, 7, r, 0)).collect();
        assert!(ids.iter().all(|i| i.len() == 32));
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let ascending = ids.windows(2).filter(|w| w[0] < w[1]).count();
        assert!(
            (300..700).contains(&ascending),
            "{ascending} of 999 ascending"
        );
        // And across connections for the same request number.
        assert_ne!(
            id(ClientIds::Random, 1, 5, 0),
            id(ClientIds::Random, 2, 5, 0)
        );
    }
}
