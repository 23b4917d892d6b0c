"""Where upstreams go: files nginx includes, the dyups interface, and nginx reloads."""
