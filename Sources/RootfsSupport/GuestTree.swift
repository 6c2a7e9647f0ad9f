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

/// An open directory of a guest tree, closed when its last reference goes.
public final class TreeDirectory: @unchecked Sendable {
    public let fd: Int32
    init(_ fd: Int32) { self.fd = fd }
    deinit { close(fd) }
}

/// The same resolution relative to open directory descriptors: every component is
/// looked up in the directory before it (fstatat, readlinkat, openat with O_NOFOLLOW,
/// mkdirat), so no host path is built and a guest path longer than PATH_MAX is no
/// limit (only a name's 255 bytes are).
extension GuestTree {
    public func openRoot() throws -> TreeDirectory {
        let fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw RootfsError("cannot open the rootfs \(root): \(FS.errnoText())") }
        return TreeDirectory(fd)
    }

    /// The directory `guestPath` names, links followed inside the tree as the guest would.
    /// `creating`: missing directories are made with that mode and a non-directory on the
    /// way is an error; nil: a missing or non-directory path gives nil.
    public func openDirectory(bytes guestPath: [UInt8], creating mode: mode_t? = nil) throws -> TreeDirectory? {
        let root = try openRoot()
        var stack: [TreeDirectory] = [root]
        var reached: [[UInt8]] = []
        var pending = components(guestPath)
        var hops = 0
        func shown(_ parts: [[UInt8]]) -> String { String(decoding: guestText(parts), as: UTF8.self) }
        while !pending.isEmpty {
            let name = pending.removeFirst()
            if name.isEmpty || name == [46] { continue }
            if name == [46, 46] {
                if stack.count > 1 { stack.removeLast(); reached.removeLast() }
                continue
            }
            let top = stack[stack.count - 1]
            var st = stat()
            if name.withCString({ fstatat(top.fd, $0, &st, AT_SYMLINK_NOFOLLOW) }) != 0 {
                guard errno == ENOENT, let mode else {
                    if mode == nil { return nil }
                    throw RootfsError("cannot read \(shown(reached + [name])) in the rootfs: \(FS.errnoText())")
                }
                if name.withCString({ mkdirat(top.fd, $0, mode) }) != 0 && errno != EEXIST {
                    throw RootfsError("cannot create \(shown(reached + [name])) in the rootfs: \(FS.errnoText())")
                }
                pending.insert(name, at: 0)
                continue
            }
            if (st.st_mode & S_IFMT) == S_IFLNK {
                hops += 1
                if hops > 40 { throw RootfsError("symbolic link loop while resolving \(String(decoding: guestPath, as: UTF8.self)) in the rootfs") }
                let target = try readLink(at: top.fd, name, shown: shown(reached + [name]))
                if target.first == UInt8(ascii: "/") { stack = [root]; reached = [] }
                pending = components(target) + pending
                continue
            }
            guard (st.st_mode & S_IFMT) == S_IFDIR else {
                if mode == nil { return nil }
                throw RootfsError("\(shown(reached + [name])) in the rootfs is not a directory")
            }
            let fd = name.withCString { openat(top.fd, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            guard fd >= 0 else { throw RootfsError("cannot open \(shown(reached + [name])) in the rootfs: \(FS.errnoText())") }
            stack.append(TreeDirectory(fd))
            reached.append(name)
        }
        return stack[stack.count - 1]
    }

    /// Where a new entry named by `guestPath` is created: its parent directory, resolved
    /// inside the tree (missing directories made), and the last name, which is not followed.
    public func parentForCreating(bytes guestPath: [UInt8], directoryMode: mode_t = 0o755) throws -> (directory: TreeDirectory, name: [UInt8]) {
        var parts = components(guestPath)
        guard let last = parts.popLast(), last != [46, 46], last != [46] else {
            throw RootfsError("invalid guest path \(String(decoding: guestPath, as: UTF8.self))")
        }
        guard let parent = try openDirectory(bytes: guestText(parts), creating: directoryMode) else {
            throw RootfsError("cannot create the directories of \(String(decoding: guestPath, as: UTF8.self)) in the rootfs")
        }
        return (parent, last)
    }

    private func readLink(at dirFD: Int32, _ name: [UInt8], shown: String) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = name.withCString { name in
            buffer.withUnsafeMutableBytes { readlinkat(dirFD, name, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count - 1) }
        }
        guard n >= 0 else { throw RootfsError("cannot read the link \(shown) in the rootfs: \(FS.errnoText())") }
        return Array(buffer.prefix(n))
    }
}
