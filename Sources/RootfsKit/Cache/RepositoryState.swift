import Foundation

/// The repository's state for the tree cache key: for Debian and Ubuntu, the SHA-256 of the
/// suite's InRelease (or Release) under REPO_URL, so that a mirror update (a new Release file)
/// invalidates a cached tree. Read from a file:// or plain path directly, from http(s) with curl.
/// Without REPO_URL (the bootstrap tool's own default mirror, which rootfs does not name) or
/// without a way to read it, the state is "unknown": the plan says so and `--refresh` rebuilds.
public enum RepositoryState {
    public static func read(osName: String, osVersion: String, repoURL: String?, runner: ProcessRunner) async -> String {
        guard ["debian", "ubuntu"].contains(osName) else { return "unknown (no repository check for \(osName))" }
        guard let repo = repoURL, !repo.isEmpty else { return "unknown (no REPO_URL: the bootstrap tool's default mirror)" }
        // The suite becomes part of a URL or path: plain names only.
        guard !osVersion.isEmpty, CacheDirectory.safeName(osVersion) == osVersion, !osVersion.hasPrefix(".") else {
            return "unknown (OS_VERSION is not a plain suite name)"
        }
        let base = repo.hasSuffix("/") ? String(repo.dropLast()) : repo
        for name in ["InRelease", "Release"] {
            let url = base + "/dists/" + osVersion + "/" + name
            if url.hasPrefix("/") || url.hasPrefix("file://") {
                let path = url.hasPrefix("file://") ? String(url.dropFirst("file://".count)) : url
                if FS.isRegularFile(path), let digest = try? SHA256.hexDigest(ofFile: path) { return "\(name) sha256:\(digest)" }
            } else if url.hasPrefix("http://") || url.hasPrefix("https://") {
                let output = try? await runner.capture(ToolCommand("curl", ["-fsSL", "--max-time", "20", "--", url]))
                if let text = output?.standardOutput, !text.isEmpty {
                    return "\(name) sha256:\(SHA256.hexDigest(of: Array(text.utf8)))"
                }
            }
        }
        return "unknown (no InRelease or Release for \(osVersion) under REPO_URL)"
    }
}
