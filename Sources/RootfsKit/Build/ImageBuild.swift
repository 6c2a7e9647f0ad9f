import Foundation

/// `rootfs build --from-image IMAGE`: a build whose tree is a container image's
/// layers instead of a distro hook's output. Everything after the tree (agent,
/// init, build record, overlays, checks, every output) is the distro build's.
///
/// The image stands where the distro would: a `Distro` whose origin is the image
/// (it has no config.sh and no hook), a config holding only what the build needs,
/// and `HookExecutor.image`, which writes the layers into the hook's tree.
public enum ImageBuild {
    /// A name for the build's directory and outputs, from the image's name:
    /// `docker://debian:bookworm` -> `debian-bookworm`, `oci:/x/layout:v1` -> `layout-v1`,
    /// `docker-archive:/x/app.tar` -> `app`. Only [a-z0-9._-] survive, so the name
    /// is a safe file name whatever the image is called.
    public static func name(for text: String) -> String {
        var rest = text
        for scheme in ["docker://", "podman://", "oci:", "docker-archive:"] where rest.hasPrefix(scheme) {
            rest = String(rest.dropFirst(scheme.count))
            break
        }
        if text.hasPrefix("docker-archive:") {
            rest = FS.basename(rest)
            for ext in [".tar.gz", ".tar.zst", ".tar"] where rest.hasSuffix(ext) { rest = String(rest.dropLast(ext.count)) }
        } else if text.hasPrefix("oci:") {
            let parts = rest.split(separator: ":", maxSplits: 1).map(String.init)
            rest = FS.basename(parts[0]) + (parts.count > 1 ? "-" + parts[1] : "")
        } else {
            // An engine image: the last path component, digest dropped, tag kept.
            rest = rest.split(separator: "@").first.map(String.init) ?? rest
            rest = rest.split(separator: "/").last.map(String.init) ?? rest
        }
        let mapped = rest.lowercased().unicodeScalars.map { c -> Character in
            (c >= "a" && c <= "z") || (c >= "0" && c <= "9") || c == "." || c == "_" || c == "-" ? Character(c) : "-"
        }
        let name = String(mapped).trimmingCharacters(in: CharacterSet(charactersIn: ".-_"))
        return name.isEmpty ? "image" : String(name.prefix(64))
    }

    /// The distro an image build stands on: named after the image, with no files.
    static func distro(name: String, image: String) -> Distro {
        Distro(name: name, directory: "", searchDirectory: SearchDirectory(path: image, origin: .image))
    }

    /// What the build reads of a config: no packages (the image has what it has), and the
    /// agent as init unless INIT_PROCESS says systemd (a container image seldom has an init).
    static func config(name: String, environment env: [String: String]) -> DistroConfig {
        let initProcess = env["INIT_PROCESS"].flatMap { $0.isEmpty ? nil : $0 } ?? "agent"
        return DistroConfig(values: ["OS_NAME": name, "OS_VERSION": "", "PACKAGES": "", "INIT_PROCESS": initProcess])
    }

    /// Writes the image's tree where a hook writes its tree: a directory (root keeps the
    /// owners), or the tar a rootless hook leaves (owners kept aside by RootlessTree).
    static func write(_ reference: ImageReference, into invocation: HookInvocation,
                      onLine: @escaping @Sendable (String) -> Void) throws {
        let source = TreeSource.image(reference)
        if let tar = invocation.environment["ROOTFS_TAR"] {
            let stats = try TreeArchiver(format: .paxRestricted, compression: .none).write(source: source, to: tar)
            onLine("\(stats.entries) entries from \(reference.description) into the tree's tar")
        } else {
            // The hook stage made the (empty) tree directory; the extractor makes its own.
            rmdir(invocation.rootfsDirectory)
            let result = try TreeExtractor(destination: invocation.rootfsDirectory).extract(source)
            onLine("\(result.entries) entries from \(reference.description)")
        }
    }
}
