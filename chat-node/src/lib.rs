//! A Socket.IO v5 chat server that scales out over Redis and drains without losing messages.
