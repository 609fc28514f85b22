//! The use cases routes and actors share, below both: the password check of a
//! login and device tokens ([`login`]), starting and ending sessions
//! ([`session`]), what a code check's outcome means ([`codes`]), the
//! account changes a code confirms ([`account`]), recovery codes
//! ([`recovery`]), sign-up ([`signup`]), the phone change ([`phone_change`]),
//! the password reset ([`password_reset`]), the notices they send
//! ([`notice`]) and the admin API's actions ([`admin`]).
//!
//! Routes parse and answer; actors hold per-flow state; the store speaks SQL.
//! This layer calls the store and the actors' handles, never a route.

pub mod account;
pub mod admin;
pub mod codes;
pub mod login;
pub mod notice;
pub mod password_reset;
pub mod phone_change;
pub mod recovery;
pub mod session;
pub mod signup;
