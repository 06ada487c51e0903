//! glommio shards and networking.
