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
    public func resolve(_ guestPath: String, followLast: Bool = true) -> Resolution {
        var pending = components(guestPath)
        var resolved: [String] = []
        var hops = 0
        while !pending.isEmpty {
            let name = pending.removeFirst()
            if name == "." || name.isEmpty { continue }
            if name == ".." { _ = resolved.popLast(); continue }
            let host = hostPath(resolved + [name])
            var st = stat()
            guard lstat(host, &st) == 0 else {
                return .missing(guestPath: "/" + (resolved + [name]).joined(separator: "/"))
            }
            if (st.st_mode & S_IFMT) == S_IFLNK && (followLast || !pending.isEmpty) {
                hops += 1
                if hops > 40 { return .loop }
                guard let target = readLink(host) else { return .missing(guestPath: "/" + (resolved + [name]).joined(separator: "/")) }
                if target.hasPrefix("/") { resolved = [] }
                pending = components(target) + pending
                continue
            }
            resolved.append(name)
        }
        return .found(hostPath: hostPath(resolved), guestPath: "/" + resolved.joined(separator: "/"))
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
        var parts = components(guestPath)
        guard let last = parts.popLast(), last != "..", last != "." else {
            throw RootfsError("invalid guest path \(guestPath)")
        }
        let parentPath = "/" + parts.joined(separator: "/")
        // Create missing directories where the guest would: at the first
        // missing component of the resolved path, links followed inside the tree.
        for _ in 0..<64 {
            switch resolve(parentPath) {
            case .found(let host, let guest):
                guard FS.isDirectory(host) else { throw RootfsError("\(guest) in the rootfs is not a directory") }
                return host + "/" + last
            case .missing(let firstMissing):
                if mkdir(root + firstMissing, directoryMode) != 0 && errno != EEXIST {
                    throw RootfsError("cannot create \(firstMissing) in the rootfs: \(FS.errnoText())")
                }
            case .loop:
                throw RootfsError("symbolic link loop while resolving \(parentPath) in the rootfs")
            }
        }
        throw RootfsError("cannot create the directories of \(guestPath) in the rootfs")
    }

    private func components(_ path: String) -> [String] {
        path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
    }

    private func hostPath(_ parts: [String]) -> String {
        parts.isEmpty ? root : root + "/" + parts.joined(separator: "/")
    }

    private func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n >= 0 else { return nil }
        buffer[n] = 0
        return String(cString: buffer)
    }
}
