import Foundation

extension BuildManifest {
    /// The manifest in `path`; `option` names where it was given, for the message.
    public static func read(_ path: String, option: String) throws -> BuildManifest {
        guard FS.isRegularFile(path), let data = FileManager.default.contents(atPath: path) else {
            throw RootfsError("\(option) \(path): no such file", hint: "give the <name>.manifest.json a build wrote next to its outputs")
        }
        do {
            return try JSONDecoder().decode(BuildManifest.self, from: data)
        } catch {
            throw RootfsError("\(path) is not a rootfs build manifest: \(error)",
                              hint: "give the <name>.manifest.json a build wrote next to its outputs")
        }
    }
}

/// `rootfs verify MANIFEST`: every output the manifest names is hashed again and compared
/// with its record, and the trees among them go through the build's own checks again
/// (RootfsChecker: an init and the agent in the guest, the agent the one recorded).
public struct ManifestVerifier: Sendable {
    public struct Item: Sendable, Encodable {
        public var kind: String
        public var path: String
        public var sha256: String?
        /// "ok", "failed", or "hashed" (no tree check for this kind).
        public var result: String
        public var problems: [String]
        public var checked: String?
    }

    public struct Report: Sendable, Encodable {
        public var manifest: String
        public var ok: Bool
        public var outputs: [Item]
    }

    /// The kinds whose file holds the guest tree in a form read here (a directory, libarchive's
    /// formats, ext4 bare or in a partition), so the checks can run on it.
    static let treeKinds: Set<String> = ["rootfs", "initrd", "tar", "image", "raw", "ext4"]

    public init() {}

    public func verify(_ manifestPath: String) throws -> Report {
        let path = FS.absolute(manifestPath)
        let manifest = try BuildManifest.read(path, option: "verify")
        let directory = FS.parent(path)
        let rootfsOnly = manifest.config?.content?.rootfsOnly ?? false
        var items: [Item] = []
        for output in manifest.outputs {
            // Where the build wrote it, or beside the manifest when the whole directory moved.
            let moved = directory + "/" + FS.basename(output.path)
            let found = FS.exists(output.path) ? output.path : FS.exists(moved) ? moved : nil
            var item = Item(kind: output.kind, path: found ?? output.path, sha256: nil, result: "ok", problems: [], checked: nil)
            guard let file = found else {
                item.result = "failed"
                item.problems.append("\(output.path) is missing (also not beside the manifest)")
                items.append(item)
                continue
            }
            if let expected = output.sha256, FS.isRegularFile(file) {
                let actual = try SHA256.hexDigest(ofFile: file)
                item.sha256 = actual
                if actual != expected {
                    item.problems.append("\(file): sha256 \(actual), the manifest records \(expected): the file changed after the build")
                }
                if let bytes = output.bytes, bytes != FS.fileSize(file) {
                    item.problems.append("\(file): \(FS.fileSize(file)) bytes, the manifest records \(bytes)")
                }
            }
            if item.problems.isEmpty && !rootfsOnly && Self.treeKinds.contains(output.kind) {
                do {
                    item.problems += try check(file, manifest: manifest)
                    item.checked = "init and agent (RootfsChecker), the agent's sha256"
                } catch where ["image", "raw"].contains(output.kind) {
                    // A disk whose file system is not read here (erofs, xfs): its digest is the proof.
                    item.checked = "not checked: its file system is not read in process (\(error))"
                } catch {
                    item.problems.append("\(file): its tree could not be read: \(error)")
                }
            }
            if !item.problems.isEmpty { item.result = "failed" }
            else if item.checked == nil || item.checked!.hasPrefix("not") { item.result = "hashed" }
            items.append(item)
        }
        return Report(manifest: path, ok: items.allSatisfy { $0.problems.isEmpty }, outputs: items)
    }

    /// The checks a build runs, on the tree `file` holds, plus the agent's digest.
    func check(_ file: String, manifest: BuildManifest) throws -> [String] {
        let source = try TreeSource.open(file, option: "verify")
        let (tree, cleanup) = try source.materialized(near: FS.parent(file) + "/.rootfs-verify")
        defer { cleanup() }
        let guest = GuestTree(root: tree)
        let agentName = FS.basename(manifest.agent.guestPath)
        var problems = RootfsChecker(tree: guest)
            .problems(agentInit: manifest.agent.isInit, agentNames: [agentName] + RootfsChecker.candidateAgentNames())
            .map { "\(file): \($0)" }
        if case .found(let host, _) = guest.resolve(manifest.agent.guestPath), FS.isRegularFile(host) {
            let digest = try SHA256.hexDigest(ofFile: host)
            if digest != manifest.agent.sha256 {
                problems.append("\(file): the agent \(manifest.agent.guestPath) has sha256 \(digest), the manifest records \(manifest.agent.sha256)")
            }
        }
        return problems
    }
}
