//! The one-shot commands: print the configuration, sign a playback token, mint a room join
//! token, run synthetic room participants (`bot`).

use anyhow::{Context, Result};
use tidecast_common::Config;

use crate::args::{Command, TokenCommand};

/// Run `command` if it is a one-shot command (true), else leave it to the services (false).
pub async fn run(command: &Command, config: &Config) -> Result<bool> {
    match command {
        Command::Config => {
            println!("{config:#?}");
            Ok(true)
        }
        Command::Token {
            action:
                TokenCommand::Sign {
                    secret,
                    path,
                    ttl,
                    ip,
                },
        } => {
            let secret = secret
                .clone()
                .unwrap_or_else(|| config.edge.signing_secret.clone());
            anyhow::ensure!(
                !secret.is_empty(),
                "no secret: pass --secret or set edge.signing_secret"
            );
            anyhow::ensure!(path.starts_with('/'), "--path must start with /");
            let expires = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock before 1970")?
                .as_secs()
                + ttl;
            let token = tidecast_common::token::TokenSigner::new(secret.as_bytes()).sign(
                &tidecast_common::token::TokenClaims {
                    expires,
                    path_prefix: path.clone(),
                    client_ip: ip.clone(),
                },
            );
            println!("{token}");
            Ok(true)
        }
        Command::Token {
            action:
                TokenCommand::Room {
                    secret,
                    room,
                    identity,
                    name,
                    viewer,
                    record,
                    ttl,
                },
        } => {
            use tidecast_rooms::token::{is_valid_name, JoinClaims, JoinTokens, RoomRole};
            let secret = secret
                .clone()
                .unwrap_or_else(|| config.rooms.api_secret.clone());
            anyhow::ensure!(
                !secret.is_empty(),
                "no secret: pass --secret or set rooms.api_secret"
            );
            anyhow::ensure!(
                is_valid_name(room) && is_valid_name(identity),
                "room and identity are 1-64 of A-Z a-z 0-9 _ - ."
            );
            let role = if *viewer {
                RoomRole::Viewer
            } else {
                RoomRole::Publisher
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock before 1970")?
                .as_secs();
            let token = JoinTokens::new(secret.as_bytes()).mint(&JoinClaims {
                room: room.clone(),
                sub: identity.clone(),
                name: name.clone(),
                role,
                record: *record,
                iat: now,
                exp: now + ttl.unwrap_or(config.rooms.token_ttl_secs),
            });
            println!("{token}");
            Ok(true)
        }
        Command::Bot {
            server,
            room,
            participants,
            prefix,
            duration,
            join_interval,
            secret,
            no_publish,
            publishers,
            schedule,
            pin,
            janus,
            colours,
            json,
        } => {
            anyhow::ensure!(
                duration.is_finite() && *duration > 0.0 && *duration < 86_400.0,
                "--duration is seconds, above 0"
            );
            anyhow::ensure!(
                join_interval.is_finite() && (0.0..3600.0).contains(join_interval),
                "--join-interval is seconds"
            );
            let options = tidecast_bot::BotOptions {
                server: server.clone(),
                room: room.clone(),
                participants: *participants,
                prefix: prefix.clone(),
                duration: std::time::Duration::from_secs_f64(*duration),
                join_interval: std::time::Duration::from_secs_f64(*join_interval),
                secret: secret.clone(),
                publishers: if *no_publish {
                    0
                } else {
                    publishers.unwrap_or(usize::MAX)
                },
                schedule: tidecast_bot::parse_schedule(schedule)?,
                pin: *pin,
                janus: janus.clone(),
                colours: *colours,
            };
            let report = tidecast_bot::run(options).await?;
            if *json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", tidecast_bot::render(&report));
            }
            anyhow::ensure!(
                report.failures.is_empty(),
                "bots failed: {:?}",
                report.failures
            );
            Ok(true)
        }
        _ => Ok(false),
    }
}
