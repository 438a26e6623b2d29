"""Reading a source: an http(s) URL through the SSRF guard or a confined file path, and sniffing its kind."""
