"""vhost-user protocol: wire codec (:mod:`.messages`); the server and session state build on it."""
