//! Kubernetes' path through zran: containerd's CRI plugin with `snapshotter = "zran"` and
//! `disable_snapshot_annotations = false`, driven over its socket as the kubelet drives it
//! (PullImage, RunPodSandbox with host networking, CreateContainer, StartContainer,
//! ContainerStatus, RemoveImage). The image with a zran artifact beside it starts lazily; the
//! pause image (built here, no artifact) is pulled and unpacked as usual.

mod common;

use common::containerd::{
    Sweep, containerd_with, layer_bytes_served, layers, ok, push_layout, snapshotter, zran_mounts,
};
use common::harness::{TestRegistry, repo_root};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// A pause image: busybox and a command that sleeps, pushed to the registry as `pause:test`.
fn push_pause(dir: &Path, host: &str) -> String {
    let layout = dir.join("pause");
    let script = format!(
        r#"
import sys
sys.path.insert(0, {testimages:?})
import oci
L = oci.Layer("pause")
L.dir("bin")
L.file("bin/busybox", open("/bin/busybox", "rb").read(), mode=0o755)
out = oci.Layout({layout:?})
m = out.image([L], {{"Cmd": ["/bin/busybox", "sleep", "3600"]}})
out.tag(m, "test")
out.close()
"#,
        testimages = repo_root().join("testimages").display().to_string(),
        layout = layout.display().to_string(),
    );
    let st = Command::new("/usr/bin/python3").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "building the pause image");
    let image = format!("{host}/pause:test");
    push_layout(&format!("oci:{}:test", layout.display()), &image);
    image
}

async fn channel(sock: &Path) -> Channel {
    let sock = sock.to_path_buf();
    Endpoint::try_from("http://[::]")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?)) }
        }))
        .await
        .unwrap()
}

#[test]
fn pods_start_lazily_through_cri() {
    let reg = TestRegistry::start("plain");
    let host = reg.host();
    let work = tempfile::tempdir().unwrap();
    let _sweep = Sweep(work.path().to_path_buf());
    let root = work.path().join("zran");
    let zsock = work.path().join("zran.sock");
    let _zran = snapshotter(&root, &zsock, &work.path().join("zran.log"), &[]);
    let pause = push_pause(work.path(), &host);
    let (_ctd, sock) = containerd_with(work.path(), &zsock, Some(&pause));
    let python = format!("{host}/python:latest");
    ok(
        Command::new(env!("CARGO_BIN_EXE_zran"))
            .args(["generate", &python, "-o"])
            .arg(work.path().join("art"))
            .arg("--push")
            .output()
            .unwrap(),
        "generate --push",
    );
    let base = layer_bytes_served(&reg, "python");
    let logs = work.path().join("logs");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let ch = channel(&sock).await;
        let mut images = ImageServiceClient::new(ch.clone());
        let mut runtime = RuntimeServiceClient::new(ch);

        let image = images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec { image: python.clone(), ..Default::default() }),
                ..Default::default()
            })
            .await
            .expect("PullImage")
            .into_inner();
        assert!(image.image_ref.starts_with("sha256:"), "{image:?}");
        assert_eq!(layer_bytes_served(&reg, "python") - base, 0, "PullImage downloaded layers");

        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "zran-pod".into(),
                uid: "zran-pod-uid".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            log_directory: logs.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                ..Default::default()
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        let created = runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata { name: "answer".into(), attempt: 0 }),
                    image: Some(ImageSpec { image: python.clone(), ..Default::default() }),
                    command: vec![
                        "/usr/bin/python3.11".into(),
                        "-c".into(),
                        "import json, email; print(json.dumps({'answer': 6 * 7}))".into(),
                    ],
                    log_path: "answer.log".into(),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        runtime
            .start_container(StartContainerRequest { container_id: created.clone() })
            .await
            .expect("StartContainer");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = runtime
                .container_status(ContainerStatusRequest { container_id: created.clone(), verbose: false })
                .await
                .expect("ContainerStatus")
                .into_inner();
            let status = st.status.expect("a status");
            if status.state == ContainerState::ContainerExited as i32 {
                assert_eq!(status.exit_code, 0, "{status:?}");
                break;
            }
            assert!(Instant::now() < deadline, "the container did not finish: {status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(logs.join("answer.log")).unwrap();
        assert!(log.contains(r#"stdout F {"answer": 42}"#), "{log}");
        let total: u64 = layers("python").iter().map(|l| l.1).sum();
        let fetched = layer_bytes_served(&reg, "python") - base;
        // (What the start reads, and the layer data after each miss, fetched beside it.)
        assert!(fetched > 0 && fetched < total * 3 / 4, "{fetched} of {total} bytes of layers served");

        let stats: Value = serde_json::from_slice(&std::fs::read(root.join("stats.json")).unwrap()).unwrap();
        assert_eq!(stats["images"][&python]["served_as"], "artifact", "{stats}");
        assert_eq!(stats["images"][&pause]["served_as"], "plain", "{stats}");

        // Removal: the pod, then the image: its snapshots go and its serving process stops.
        runtime
            .remove_container(RemoveContainerRequest { container_id: created })
            .await
            .expect("RemoveContainer");
        runtime.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("Stop");
        runtime.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await.expect("Remove");
        images
            .remove_image(RemoveImageRequest {
                image: Some(ImageSpec { image: python.clone(), ..Default::default() }),
            })
            .await
            .expect("RemoveImage");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !zran_mounts(&root).is_empty() {
            assert!(Instant::now() < deadline, "still mounted: {:?}", zran_mounts(&root));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
