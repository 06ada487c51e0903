//! HTTP/1.1 upgrade parsing and the RFC 6455 frame codec.
