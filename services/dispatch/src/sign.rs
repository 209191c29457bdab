//! Standard Webhooks signatures: `webhook-signature: v1,<base64 of
//! HMAC-SHA256("{id}.{timestamp}.{body}")>`, keyed by the base64-decoded
//! bytes after a secret's `whsec_` prefix; one signature per secret,
//! space-separated, while an old secret still signs during a rotation.
//! The HMAC itself is the store's (erasure keys its user hashes with it).

use base64::Engine as _;
use tributary_store::hmac::hmac_sha256;

/// The key bytes of a `whsec_` secret; `None` for one that is not.
pub fn key_of(secret: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_")?)
        .ok()
}

/// The `webhook-signature` header's value for one message under every
/// secret given (those that cannot be read are skipped).
pub fn signature(secrets: &[String], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut message = Vec::with_capacity(id.len() + body.len() + 24);
    message.extend_from_slice(id.as_bytes());
    message.push(b'.');
    message.extend_from_slice(timestamp.to_string().as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    secrets
        .iter()
        .filter_map(|s| key_of(s))
        .map(|key| {
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, &message))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secrets = vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()];
        assert_eq!(
            signature(
                &secrets,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn every_readable_secret_signs() {
        let a = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned();
        let b = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned();
        let both = signature(&[a.clone(), b, "not-a-secret".into()], "m", 1, b"{}");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature(&[a], "m", 1, b"{}"));
    }
}
