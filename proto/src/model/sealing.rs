//! Sealed files: encrypted on the writer with age (X25519) to the public keys of the nodes the
//! file's readers match, so that no server (and no other node) can read them. Each agent makes
//! its key pair and registers the public key at `/eden/sealkeys/NODE`, which only that node may
//! write. A sealed plaintext starts with a line naming the file (`eden-file NAME`), checked when
//! it is opened: ciphertext copied under another name does not open (age has no associated data;
//! Sealed Secrets binds to name and namespace the same way).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::str::FromStr;

use crate::client::Client;
use crate::model::readers::Readers;
use crate::model::{keys, kv, Error};

fn header(name: &str) -> Vec<u8> {
    format!("eden-file {name}\n").into_bytes()
}

/// A new key pair: (secret, public), as age writes them (`AGE-SECRET-KEY-1...`, `age1...`).
pub fn new_key() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    (
        id.to_string().expose_secret().to_string(),
        id.to_public().to_string(),
    )
}

/// The public key of a secret key.
pub fn public_of(secret: &str) -> Result<String, String> {
    age::x25519::Identity::from_str(secret.trim())
        .map(|i| i.to_public().to_string())
        .map_err(|e| format!("not an age secret key: {e}"))
}

/// `plaintext` of file `name`, sealed to `recipients` (age public keys).
pub fn seal(name: &str, plaintext: &[u8], recipients: &[String]) -> Result<Vec<u8>, String> {
    let parsed = recipients
        .iter()
        .map(|r| age::x25519::Recipient::from_str(r).map_err(|e| format!("public key {r:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let enc = age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| format!("sealing {name}: {e}"))?;
    let mut out = Vec::with_capacity(plaintext.len() + 256);
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| format!("sealing {name}: {e}"))?;
    w.write_all(&header(name))
        .and_then(|_| w.write_all(plaintext))
        .and_then(|_| w.finish().map(|_| ()))
        .map_err(|e| format!("sealing {name}: {e}"))?;
    Ok(out)
}

/// Opens file `name`'s sealed bytes with `secret` (an age secret key).
pub fn open(name: &str, sealed: &[u8], secret: &str) -> Result<Vec<u8>, String> {
    let id = age::x25519::Identity::from_str(secret.trim())
        .map_err(|e| format!("not an age secret key: {e}"))?;
    let d = age::Decryptor::new_buffered(sealed).map_err(|e| format!("opening {name}: {e}"))?;
    let mut plain = Vec::new();
    d.decrypt(std::iter::once(&id as &dyn age::Identity))
        .and_then(|mut r| r.read_to_end(&mut plain).map_err(Into::into))
        .map_err(|e| format!("opening {name}: {e} (not sealed to this node?)"))?;
    let h = header(name);
    if !plain.starts_with(&h) {
        return Err(format!(
            "opening {name}: it was sealed as another file (copied under a new name?)"
        ));
    }
    Ok(plain.split_off(h.len()))
}

/// Registers node `node`'s public key (the agent does, at start).
pub async fn register(client: &Client, node: &str, public: &str) -> Result<(), Error> {
    let key = keys::sealkey(node);
    if kv::get_one(client, &key)
        .await?
        .is_some_and(|kv| kv.value == public.as_bytes())
    {
        return Ok(());
    }
    kv::txn(
        client,
        vec![],
        vec![kv::put_raw(&key, public.as_bytes().to_vec(), 0)],
        vec![],
    )
    .await?;
    Ok(())
}

/// The nodes a file sealed for `readers` goes to, with their public keys: every node with a key
/// whose labels the readers match now, and `owner` (the namespace's node, which re-seals it).
pub async fn recipients(
    client: &Client,
    readers: &Readers,
    owner: Option<&str>,
) -> Result<BTreeMap<String, String>, Error> {
    let (kvs, _) = kv::get_prefix(client, keys::SEALKEYS, 0, false).await?;
    let mut out = BTreeMap::new();
    for kv in kvs {
        let Some(node) = keys::rest(&kv.key, keys::SEALKEYS) else {
            continue;
        };
        let public = String::from_utf8_lossy(&kv.value).into_owned();
        let labels: BTreeMap<String, String> =
            match kv::get_one(client, &keys::labels(node)).await? {
                Some(l) => kv::decode(&l).map_err(Error::Corrupt)?,
                None => BTreeMap::new(),
            };
        if Some(node) == owner || readers.allows(node, &labels) {
            out.insert(node.to_string(), public);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_for_some_opened_by_them_only_and_under_its_name_only() {
        let (a_secret, a_public) = new_key();
        let (b_secret, _) = new_key();
        assert_eq!(public_of(&a_secret).unwrap(), a_public);
        let sealed = seal("a/tls/ca.key", b"secret", &[a_public]).unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(open("a/tls/ca.key", &sealed, &a_secret).unwrap(), b"secret");
        assert!(open("a/tls/ca.key", &sealed, &b_secret).is_err());
        assert!(open("a/tls/other", &sealed, &a_secret)
            .unwrap_err()
            .contains("another file"));
    }
}
