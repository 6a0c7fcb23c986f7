//! End-to-end tests: each one starts the real `refold` binary on its own store and drives
//! it over HTTP (or through its CLI), as a user would.

mod model;
mod support;

mod appends;
mod backup;
mod cli;
mod concurrency;
mod console;
mod crash;
mod errors;
mod groups;
mod languages;
mod modules;
mod openapi;
mod processors;
mod promises;
mod reads;
mod sandbox;
mod security;
mod shop;
mod subscriptions;
mod versions;
