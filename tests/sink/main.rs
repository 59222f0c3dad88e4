//! Sinks: files, the socket (and its documented Python client), and the http endpoints.

mod clusters;
mod files;
mod grafana;
mod http_endpoints;
mod python_client;
mod socket;
