//! This node's key for sealed files: an age X25519 key pair made once and kept in
//! `DATA_DIR/seal.key` (mode 0600); the public half is registered at `/eden/sealkeys/NODE`, which
//! only this node may write (`eden_proto::model::sealing`).

use std::path::Path;

use eden_proto::model::sealing;

pub struct SealKey {
    secret: String,
    public: String,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl SealKey {
    /// The key in `data_dir`, made there if it has none.
    pub fn load_or_make(data_dir: &Path) -> Result<SealKey, String> {
        let path = data_dir.join("seal.key");
        let secret = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (secret, _) = sealing::new_key();
                crate::place::write_atomically(&path, secret.as_bytes(), 0o600, None, None)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                secret
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let public = sealing::public_of(&secret).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(SealKey { secret, public })
    }

    pub fn public(&self) -> &str {
        &self.public
    }

    /// Opens file `name`'s sealed bytes.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        sealing::open(name, sealed, &self.secret)
    }
}
