import RootfsSupport

/// One output a writer produced: what it is, where, how big, and its digest.
/// It lives with the writers (not with the build) so that writers never
/// refer to the layer above them.
public struct BuildOutput: Sendable, Equatable, Codable {
    public var kind: String
    public var path: String
    public var bytes: Int64
    /// The SHA-256 of a file output (nil for the rootfs directory).
    public var sha256: String? = nil
    /// A `--verity` disk's tree: root hash, salt, blocks (nil otherwise, and then not in the JSON).
    public var verity: VerityParameters? = nil
    /// Where its Kata root-hash file (`root_hash_<variant>.txt`) was written.
    public var rootHashFile: String? = nil

    public init(kind: String, path: String, bytes: Int64, sha256: String? = nil) {
        self.kind = kind
        self.path = path
        self.bytes = bytes
        self.sha256 = sha256
    }
}

extension BuildOutput {
    /// A written file's record: its size and SHA-256 read back from the file, its path made absolute.
    public static func file(kind: String, path: String) throws -> BuildOutput {
        let path = FS.absolute(path)
        return BuildOutput(kind: kind, path: path, bytes: FS.fileSize(path), sha256: try SHA256.hexDigest(ofFile: path))
    }

    /// The one result line of build, image, initrd and extend: `KIND: /ABSOLUTE/PATH  SIZE  sha256:HEX`
    /// (a directory has neither size nor digest; an OCI layout shows its manifest's digest).
    public var resultLine: String {
        var line = "\(kind): \(FS.absolute(path))"
        if kind != "rootfs" { line += "  " + formatBytes(bytes) }
        if let sha256 { line += "  sha256:" + sha256 }
        return line
    }
}

extension FormatOutput {
    /// The paths this output's writer renames into place, and whether each is a
    /// directory: what is checked before any work (an existing /dev/null, FIFO,
    /// socket, device or symlink there is refused, never replaced).
    public var writtenPaths: [(path: String, isDirectory: Bool)] {
        switch format {
        case .rootfs, .oci, .containerDisk: return [(path, true)]
        case .kernelInitrd:
            let p = KernelBundleWriter(options: ImageOptions()).paths(prefix: path)
            return [(p.kernel, false), (p.initrd, false), (p.cmdline, false)]
        default: return [(path, false)]
        }
    }

    /// Refuses, before any work, an existing output of another kind (see `writtenPaths`).
    public func requireReplaceable(option: String) throws {
        for written in writtenPaths {
            try FS.requireReplaceableOutput(written.path, option: option, directory: written.isDirectory)
        }
    }
}
