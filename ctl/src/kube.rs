//! `tokctl kube-credential NAME`: a kubectl exec credential plugin
//! (client-go's `ExecCredential`, `client.authentication.k8s.io/v1` or
//! `v1beta1`). kubectl says which version it wants, and whether a human
//! can answer, in `KUBERNETES_EXEC_INFO`; the answer on stdout is the
//! token and its expiry, which kubectl caches until then. A login happens
//! only when kubectl says the plugin may interact (`spec.interactive`),
//! and then writes nothing to stdout but the credential.
//!
//! The token goes only to an API server the installation's `kube_servers`
//! names (tokd checks): kubectl tells the plugin the cluster's `server`
//! when the exec section has `provideClusterInfo: true`, which tokctl
//! therefore needs; a cluster reached without verifying its certificate,
//! or through a proxy, gets nothing.

use crate::failure::{Failure, exit};
use serde::{Deserialize, Serialize};

/// The versions of the `ExecCredential` API tokctl answers in.
pub const API_VERSIONS: [&str; 2] = [
    "client.authentication.k8s.io/v1",
    "client.authentication.k8s.io/v1beta1",
];

/// What kubectl tells its plugin.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExecInfo {
    pub api_version: String,
    /// Whether the plugin may ask a human (kubectl gave it the terminal).
    pub interactive: bool,
    /// The cluster, when the exec section has `provideClusterInfo: true`.
    pub cluster: Option<Cluster>,
}

/// The cluster kubectl says the credential is for.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    #[serde(default)]
    pub server: String,
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    #[serde(default)]
    pub proxy_url: String,
}

impl ExecInfo {
    /// The API server the token would go to, if it may go there.
    pub fn server(&self) -> Result<&str, Failure> {
        let Some(cluster) = &self.cluster else {
            return Err(Failure::new(
                exit::USAGE,
                "kubectl did not say which cluster the token is for; add `provideClusterInfo: true` to the exec section of the kubeconfig's user",
            ));
        };
        if cluster.insecure_skip_tls_verify {
            return Err(Failure::new(
                exit::USAGE,
                format!(
                    "not giving a token for {}: the kubeconfig turns off the check of its certificate (insecure-skip-tls-verify)",
                    cluster.server
                ),
            ));
        }
        if !cluster.proxy_url.is_empty() {
            return Err(Failure::new(
                exit::USAGE,
                format!(
                    "not giving a token for {}: the kubeconfig sends it through a proxy ({})",
                    cluster.server, cluster.proxy_url
                ),
            ));
        }
        Ok(&cluster.server)
    }
}

/// `KUBERNETES_EXEC_INFO`, or (run by hand, without it) `v1` and no
/// interaction.
pub fn exec_info(variable: Option<&str>) -> Result<ExecInfo, Failure> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Info {
        api_version: Option<String>,
        #[serde(default)]
        spec: Spec,
    }
    #[derive(Default, Deserialize)]
    struct Spec {
        #[serde(default)]
        interactive: bool,
        #[serde(default)]
        cluster: Option<Cluster>,
    }
    let Some(variable) = variable.filter(|v| !v.trim().is_empty()) else {
        return Ok(ExecInfo {
            api_version: API_VERSIONS[0].to_owned(),
            ..ExecInfo::default()
        });
    };
    let info: Info = serde_json::from_str(variable).map_err(|error| {
        Failure::new(
            exit::USAGE,
            format!("KUBERNETES_EXEC_INFO is not kubectl's ExecCredential ({error})"),
        )
    })?;
    let api_version = info
        .api_version
        .unwrap_or_else(|| API_VERSIONS[0].to_owned());
    if !API_VERSIONS.contains(&api_version.as_str()) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "kubectl asks for ExecCredential {api_version}; tokctl answers in {}: set `apiVersion` in the kubeconfig's exec section to one of them",
                API_VERSIONS.join(" or ")
            ),
        ));
    }
    Ok(ExecInfo {
        api_version,
        interactive: info.spec.interactive,
        cluster: info.spec.cluster,
    })
}

/// The `ExecCredential` kubectl reads: the token, and its expiry as RFC
/// 3339 (none when the token does not expire, `expires_at` 0).
pub fn credential(api_version: &str, token: &str, expires_at: i64) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Credential<'a> {
        api_version: &'a str,
        kind: &'static str,
        status: Status<'a>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Status<'a> {
        token: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        expiration_timestamp: Option<String>,
    }
    let expiration_timestamp =
        u64::try_from(expires_at)
            .ok()
            .filter(|secs| *secs > 0)
            .map(|secs| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
                )
                .to_string()
            });
    let mut text = serde_json::to_string(&Credential {
        api_version,
        kind: "ExecCredential",
        status: Status {
            token,
            expiration_timestamp,
        },
    })
    .unwrap_or_default();
    text.push('\n');
    text
}

/// `tokctl kube-credential NAME`: the credential for the cluster kubectl
/// names in `info`, logging in first when kubectl lets the plugin
/// interact and NAME needs it.
pub async fn run(
    proxy: &tokd_shared::ManagerProxy<'_>,
    deadline: &crate::Deadline,
    info: ExecInfo,
    name: &str,
    min_valid: std::time::Duration,
    timeout: Option<std::time::Duration>,
) -> Result<String, Failure> {
    use crate::{login, say};
    let server = info.server()?;
    let secs = u32::try_from(min_valid.as_secs()).unwrap_or(u32::MAX);
    let (token, expires_at, warning) = match deadline
        .bound(proxy.get_kube_credential(name, server, secs))
        .await?
    {
        Err(tokd_shared::Error::NeedsLogin(_)) if info.interactive => {
            // stdout is kubectl's: the login's URL goes to stderr with the
            // rest of what it says.
            say::keep_stdout_for_the_result(true);
            let outcome =
                login::login(proxy, deadline, name, login::Flow::default_here(), timeout).await;
            say::keep_stdout_for_the_result(false);
            outcome?;
            deadline
                .bound(proxy.get_kube_credential(name, server, secs))
                .await??
        }
        other => other?,
    };
    if !warning.is_empty() {
        say::warning(&warning);
    }
    Ok(credential(&info.api_version, &token, expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_s_info_gives_the_version_and_whether_to_interact() {
        assert_eq!(
            exec_info(Some(
                r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","spec":{"interactive":true}}"#
            ))
            .expect("v1beta1"),
            ExecInfo {
                api_version: API_VERSIONS[1].into(),
                interactive: true,
                cluster: None,
            }
        );
        assert_eq!(
            exec_info(None).expect("by hand"),
            ExecInfo {
                api_version: API_VERSIONS[0].into(),
                ..ExecInfo::default()
            }
        );
        let with_cluster = exec_info(Some(
            r#"{"apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false,"cluster":{"server":"https://k8s.example.com:6443","certificate-authority-data":"AAAA"}}}"#,
        ))
        .expect("with the cluster");
        assert_eq!(
            with_cluster.server().ok(),
            Some("https://k8s.example.com:6443")
        );
        assert!(
            exec_info(None)
                .expect("by hand")
                .server()
                .is_err_and(|f| f.message.contains("provideClusterInfo: true"))
        );
        for refused in [
            r#"{"spec":{"cluster":{"server":"https://k","insecure-skip-tls-verify":true}}}"#,
            r#"{"spec":{"cluster":{"server":"https://k","proxy-url":"http://proxy:3128"}}}"#,
        ] {
            assert!(
                exec_info(Some(refused)).expect("parses").server().is_err(),
                "{refused}"
            );
        }
        let old = exec_info(Some(
            r#"{"apiVersion":"client.authentication.k8s.io/v1alpha1","spec":{}}"#,
        ))
        .expect_err("v1alpha1");
        assert_eq!(old.status, exit::USAGE);
        assert!(old.message.contains("set `apiVersion`"), "{}", old.message);
        assert!(exec_info(Some("{")).is_err());
    }

    #[test]
    fn the_credential_is_client_go_s() {
        let value: serde_json::Value =
            serde_json::from_str(&credential(API_VERSIONS[0], "T", 1_900_000_000)).expect("json");
        assert_eq!(
            value,
            serde_json::json!({
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": {"token": "T", "expirationTimestamp": "2030-03-17T17:46:40Z"}
            })
        );
        let value: serde_json::Value =
            serde_json::from_str(&credential(API_VERSIONS[1], "T", 0)).expect("json");
        assert_eq!(value["status"], serde_json::json!({"token": "T"}));
    }
}
