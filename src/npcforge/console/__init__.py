"""The web console: server-rendered pages under /console in the API app."""
