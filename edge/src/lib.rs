//! The tidecast edge: a caching reverse proxy in front of origins (or of a shield edge) with the
//! same URL layout, so it is transparent to players.
//!
//! Pure cores: [`policy`] (cache key, freshness, stale-if-error, `Age`), [`pool`] (stream →
//! upstream by rendezvous hashing, health, failover order), [`director`] (player → edge in its
//! region or the nearest, HLS Content Steering). Coalescing: [`flight`] (one
//! upstream fetch per key, waiters streamed as bytes arrive). Shell: [`server`] (hyper server
//! and client, moka cache with LRU eviction, signed playback, health checks, metrics), with the
//! upstream half (fetch, failover, relay into flight and cache) in `upstream`.

pub mod director;
mod director_routes;
pub mod flight;
pub mod policy;
pub mod pool;
pub mod server;
mod upstream;

pub use server::Edge;
