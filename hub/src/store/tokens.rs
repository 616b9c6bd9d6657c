//! API tokens, stored by their keyed hash.

use super::*;

impl Store {
    /// Every token record with the keyed hash it is stored under.
    pub fn tokens(&self) -> Result<Vec<(Vec<u8>, TokenRecord)>, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut tokens = Vec::new();
        let mut failure = None;
        snap.scan(
            Table::Tokens,
            &KeyRange::all(),
            Direction::Forward,
            &mut |k, v| match records::decode_token(v) {
                Ok(record) => {
                    tokens.push((k.to_vec(), record));
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            },
        )?;
        failure.map_or(Ok(tokens), Err)
    }

    /// Stores several token records in one commit.
    pub fn put_tokens(&self, tokens: &[(Vec<u8>, TokenRecord)]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        for (hash, record) in tokens {
            batch.put(Table::Tokens, hash.clone(), records::encode(record)?);
        }
        self.engine.commit(&batch)?;
        Ok(())
    }

    /// Stores a token record under the keyed hash of its secret.
    pub fn put_token(&self, hash: &[u8], record: &TokenRecord) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        batch.put(Table::Tokens, hash.to_vec(), records::encode(record)?);
        self.engine.commit(&batch)?;
        Ok(())
    }
}
