import Foundation

/// What `--force` may replace. A rootfs directory is replaced only once the new
/// build succeeded, but then wholly: `-r ~ --force` would delete a home directory.
/// Never `/`, `$HOME` or a mount point; otherwise only a tree an earlier rootfs build
/// wrote (it holds var/lib/osbuilder/osbuilder.yaml), unless `--force-any-directory`.
struct ForceGuard {
    var environment: [String: String]

    func check(_ directory: String, anyDirectory: Bool) throws {
        // A symlink is refused as an output of its own (FS.remove would otherwise reach its target).
        try FS.requireReplaceableOutput(directory, option: "--rootfs-dir", directory: true)
        guard let real = FS.realDirectoryPath(directory) else {
            throw RootfsError("--rootfs-dir \(directory) is not a directory of its own (a symbolic link?)",
                              hint: "give the directory itself; --force never replaces what a link points to")
        }
        let shown = String(decoding: real, as: UTF8.self)
        if real == Array("/".utf8) {
            throw RootfsError("--force would replace / (the host's root directory)", hint: "give -r a directory of its own, e.g. build/rootfs")
        }
        for home in [environment["HOME"], ProcessInfo.processInfo.environment["HOME"]].compactMap({ $0 }) where !home.isEmpty {
            if let homeReal = FS.realDirectoryPath(home), homeReal == real {
                throw RootfsError("--force would replace \(shown), your home directory", hint: "give -r a directory of its own, e.g. build/rootfs")
            }
        }
        if Self.isMountPoint(real) {
            throw RootfsError("--force would replace \(shown), a mount point", hint: "give -r a directory below it, e.g. \(shown)/rootfs")
        }
        if !anyDirectory && !Self.holdsBuildRecord(directory) {
            throw RootfsError("--force would replace \(shown), which holds no rootfs build (no \(BuildRecord.guestPath.dropFirst()))",
                              hint: "--force replaces only a tree an earlier rootfs build wrote; pass --force-any-directory to replace this one, or choose another --rootfs-dir")
        }
    }

    /// Whether a file system is mounted exactly at `real` (mountinfo, bytes).
    static func isMountPoint(_ real: [UInt8]) -> Bool {
        guard let parent = real.lastIndex(of: UInt8(ascii: "/")) else { return false }
        let above = parent == 0 ? Array("/".utf8) : Array(real[..<parent])
        return FS.mountPoints(underReal: above).contains(real)
    }

    /// var/lib/osbuilder/osbuilder.yaml as a regular file, every directory on the way
    /// a real directory (lstat): a link in the old tree never sends the check to the host.
    static func holdsBuildRecord(_ directory: String) -> Bool {
        var path = directory
        let parts = BuildRecord.guestPath.split(separator: "/")
        for (index, part) in parts.enumerated() {
            path += "/" + part
            var st = stat()
            guard lstat(path, &st) == 0 else { return false }
            let want = index == parts.count - 1 ? S_IFREG : S_IFDIR
            guard (st.st_mode & S_IFMT) == want else { return false }
        }
        return true
    }
}
