import Foundation

/// A root file system tree on the host, with paths resolved the way the guest
/// will resolve them: absolute symbolic links point into the tree, `..` never
/// leaves it, and nothing on the host is ever read through a guest link.
public struct GuestTree: Sendable {
    public let root: String

    public init(root: String) { self.root = root }

    public enum Resolution: Equatable, Sendable {
        /// The host path of the final object (not followed if `followLast` was false).
        case found(hostPath: String, guestPath: String)
        /// Some component is missing; `guestPath` is how far resolution got.
        case missing(guestPath: String)
        case loop
    }

    /// Resolves `guestPath` inside the tree, following links as the guest would.
    /// (The String form of `resolve(bytes:)`: for names that are UTF-8.)
    public func resolve(_ guestPath: String, followLast: Bool = true) -> Resolution {
        switch resolve(bytes: Array(guestPath.utf8), followLast: followLast) {
        case .found(let host, let guest): return .found(hostPath: String(decoding: host, as: UTF8.self), guestPath: String(decoding: guest, as: UTF8.self))
        case .missing(let guest): return .missing(guestPath: String(decoding: guest, as: UTF8.self))
        case .loop: return .loop
        }
    }

    /// What `resolve(bytes:)` found, as bytes: guest names need not be UTF-8.
    public enum ByteResolution: Equatable, Sendable {
        case found(hostPath: [UInt8], guestPath: [UInt8])
        case missing(guestPath: [UInt8])
        case loop
    }

    /// Resolves `guestPath` (bytes) inside the tree, following links as the guest would.
    public func resolve(bytes guestPath: [UInt8], followLast: Bool = true) -> ByteResolution {
        var pending = components(guestPath)
        var resolved: [[UInt8]] = []
        var hops = 0
        while !pending.isEmpty {
            let name = pending.removeFirst()
            if name == [46] || name.isEmpty { continue }
            if name == [46, 46] { _ = resolved.popLast(); continue }
            let host = hostPath(resolved + [name])
            var st = stat()
            guard host.withCString({ lstat($0, &st) }) == 0 else {
                return .missing(guestPath: guestText(resolved + [name]))
            }
            if (st.st_mode & S_IFMT) == S_IFLNK && (followLast || !pending.isEmpty) {
                hops += 1
                if hops > 40 { return .loop }
                guard let target = readLink(host) else { return .missing(guestPath: guestText(resolved + [name])) }
                if target.first == UInt8(ascii: "/") { resolved = [] }
                pending = components(target) + pending
                continue
            }
            resolved.append(name)
        }
        return .found(hostPath: hostPath(resolved), guestPath: guestText(resolved))
    }

    /// The host path of the resolved object, or nil.
    public func hostPath(resolving guestPath: String) -> String? {
        if case .found(let host, _) = resolve(guestPath) { return host }
        return nil
    }

    /// Where a new entry named by `guestPath` must be created: its parent is
    /// resolved inside the tree (creating missing directories), the last
    /// component is not followed.
    public func hostPathForCreating(_ guestPath: String, directoryMode: mode_t = 0o755) throws -> String {
        String(decoding: try hostPathForCreating(bytes: Array(guestPath.utf8), directoryMode: directoryMode), as: UTF8.self)
    }

    /// `hostPathForCreating` on bytes: every name is kept exactly, UTF-8 or not.
    public func hostPathForCreating(bytes guestPath: [UInt8], directoryMode: mode_t = 0o755) throws -> [UInt8] {
        var parts = components(guestPath)
        let shown = String(decoding: guestPath, as: UTF8.self)
        guard let last = parts.popLast(), last != [46, 46], last != [46] else {
            throw RootfsError("invalid guest path \(shown)")
        }
        let parentPath = guestText(parts)
        // Create missing directories where the guest would: at the first
        // missing component of the resolved path, links followed inside the tree.
        for _ in 0..<64 {
            switch resolve(bytes: parentPath) {
            case .found(let host, let guest):
                var st = stat()
                guard host.withCString({ stat($0, &st) }) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
                    throw RootfsError("\(String(decoding: guest, as: UTF8.self)) in the rootfs is not a directory")
                }
                return host + [UInt8(ascii: "/")] + last
            case .missing(let firstMissing):
                if (rootBytes + firstMissing).withCString({ mkdir($0, directoryMode) }) != 0 && errno != EEXIST {
                    throw RootfsError("cannot create \(String(decoding: firstMissing, as: UTF8.self)) in the rootfs: \(FS.errnoText())")
                }
            case .loop:
                throw RootfsError("symbolic link loop while resolving \(String(decoding: parentPath, as: UTF8.self)) in the rootfs")
            }
        }
        throw RootfsError("cannot create the directories of \(shown) in the rootfs")
    }

    private var rootBytes: [UInt8] { Array(root.utf8) }

    private func components(_ path: [UInt8]) -> [[UInt8]] {
        path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true).map(Array.init)
    }

    private func guestText(_ parts: [[UInt8]]) -> [UInt8] {
        [UInt8(ascii: "/")] + Array(parts.joined(separator: [UInt8(ascii: "/")]))
    }

    private func hostPath(_ parts: [[UInt8]]) -> [UInt8] {
        parts.isEmpty ? rootBytes : rootBytes + [UInt8(ascii: "/")] + Array(parts.joined(separator: [UInt8(ascii: "/")]))
    }

    private func readLink(_ path: [UInt8]) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = path.withCString { name in
            buffer.withUnsafeMutableBytes { readlink(name, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count - 1) }
        }
        guard n >= 0 else { return nil }
        return Array(buffer.prefix(n))
    }
}
