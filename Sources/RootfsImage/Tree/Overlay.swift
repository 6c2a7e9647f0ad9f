import RootfsSupport
import Foundation

/// One composition step applied to a built tree before the writers run.
public enum OverlaySpec: Sendable, Equatable, CustomStringConvertible {
    /// A directory or tar archive whose content is laid over the tree's root.
    case overlay(String)
    /// One host file (or directory) copied to a guest path (LinuxKit's `files:`).
    case file(guestPath: String, hostPath: String)

    /// Parses `--file GUEST_PATH=HOST_PATH`.
    public static func parseFile(_ text: String) throws -> OverlaySpec {
        guard let eq = text.firstIndex(of: "="), text[..<eq].hasPrefix("/"), eq != text.index(before: text.endIndex) else {
            throw RootfsError("--file \(text): expected GUEST_PATH=HOST_PATH with an absolute guest path",
                              hint: "for example --file /etc/motd=./motd")
        }
        let guest = String(text[..<eq])
        if guest.split(separator: "/").contains("..") {
            throw RootfsError("--file \(text): the guest path must not hold '..'")
        }
        return .file(guestPath: guest, hostPath: String(text[text.index(after: eq)...]))
    }

    public var description: String {
        switch self {
        case .overlay(let p): return "overlay \(p)"
        case .file(let g, let h): return "file \(g)=\(h)"
        }
    }
}

/// Lays overlays over a tree directory. Every destination is resolved inside
/// the tree as the guest would resolve it (GuestTree): a link in the tree, even
/// an absolute one or one climbing with `..`, never leads outside it; the last
/// component is replaced, never written through. Archive overlays keep the
/// archive's owners; directory overlays and `--file`s are owned by root.
public struct OverlayApplier {
    public var tree: GuestTree
    public var keepOwnership: Bool = geteuid() == 0

    public init(tree: GuestTree) { self.tree = tree }

    public func apply(_ specs: [OverlaySpec]) throws {
        for spec in specs { try apply(spec) }
    }

    public func apply(_ spec: OverlaySpec) throws {
        switch spec {
        case .overlay(let path):
            let source = try TreeSource.open(path, option: "--overlay")
            if case .directory = source { try apply(source, at: [], forceRoot: true, label: "--overlay \(path)") }
            else { try apply(source, at: [], forceRoot: false, label: "--overlay \(path)") }
        case .file(let guest, let hostPath):
            let absolute = FS.absolute(hostPath)
            let prefix = guest.split(separator: "/").map(String.init)
            if FS.isDirectory(absolute) {
                try apply(.directory(absolute), at: prefix, forceRoot: true, label: "--file \(guest)=\(hostPath)")
            } else if FS.isRegularFile(absolute) {
                try copyFile(host: absolute, guest: guest)
            } else {
                throw RootfsError("--file \(guest)=\(hostPath): \(hostPath) is not a readable file or directory")
            }
        }
    }

    private func copyFile(host: String, guest: String) throws {
        var st = stat()
        guard stat(host, &st) == 0 else { throw RootfsError("cannot read \(host): \(FS.errnoText())") }
        let destination = try tree.hostPathForCreating(bytes: Array(guest.utf8))
        try removeNonDirectory(destination, guest: guest, label: "--file \(guest)")
        let input = open(host, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw RootfsError("cannot read \(host): \(FS.errnoText())") }
        defer { close(input) }
        let output = destination.withCString { open($0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
        guard output >= 0 else { throw RootfsError("cannot create \(guest) in the rootfs: \(FS.errnoText())") }
        defer { close(output) }
        try copyAll(from: input, to: output, what: host)
        let item = TreeItem(path: [], mode: UInt32(st.st_mode), uid: 0, gid: 0, mtime: st.st_mtim.tv_sec, size: 0,
                            linkTarget: nil, hardLinkTo: nil, nlink: 1, rdev: 0)
        try TreeExtractor.setMetadata(destination, item, keepOwnership: keepOwnership)
    }

    /// Removes what sits at `path` if it is not a directory (a file or a link: replaced, not followed).
    private func removeNonDirectory(_ path: [UInt8], guest: String, label: String) throws {
        var st = stat()
        guard path.withCString({ lstat($0, &st) }) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            throw RootfsError("\(label): \(guest) is a directory in the rootfs and cannot be replaced by a file",
                              hint: "remove it in the hook, or put the file elsewhere")
        }
        guard path.withCString({ unlink($0) }) == 0 else { throw RootfsError("cannot replace \(guest) in the rootfs: \(FS.errnoText())") }
    }

    /// Lays a tar archive over the tree's root, keeping its owners (Kata's tarballs: the agent, CoCo, pause, hooks).
    public func applyArchive(_ path: String, label: String) throws {
        try apply(.archive(path), at: [], forceRoot: false, label: label)
    }

    /// Every guest and host path is bytes: a name that is not UTF-8 is written exactly
    /// (two such names never collide into one U+FFFD spelling).
    private func apply(_ source: TreeSource, at prefix: [String], forceRoot: Bool, label: String) throws {
        var placed: [[UInt8]: [UInt8]] = [:]
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        var directories: [([UInt8], TreeItem)] = []
        let slash = UInt8(ascii: "/")
        try source.walk { original in
            var item = original
            if forceRoot { item.uid = 0; item.gid = 0 }
            let parts = prefix.map { Array($0.utf8) } + (item.isRoot ? [] : [item.path])
            if parts.isEmpty { return }  // the overlay's root does not change the tree's root
            let guestBytes = [slash] + Array(parts.joined(separator: [slash]))
            let guest = String(decoding: guestBytes, as: UTF8.self)  // for messages only
            if item.fileType == FileType.dir {
                // An existing directory (or a link to one, as /lib -> usr/lib) is kept; missing ones are made.
                if case .found(let host, _) = tree.resolve(bytes: guestBytes), Self.isDirectory(host) {
                    if case .found(let unfollowed, _) = tree.resolve(bytes: guestBytes, followLast: false), unfollowed == host {
                        directories.append((host, item))
                    }
                    return
                }
                let destination = try tree.hostPathForCreating(bytes: guestBytes)
                try removeNonDirectory(destination, guest: guest, label: label)
                guard destination.withCString({ mkdir($0, 0o700) }) == 0 else {
                    throw RootfsError("cannot create \(guest) in the rootfs: \(FS.errnoText())")
                }
                directories.append((destination, item))
                return
            }
            let destination = try tree.hostPathForCreating(bytes: guestBytes)
            try removeNonDirectory(destination, guest: guest, label: label)
            if let first = item.hardLinkTo {
                guard let firstHost = placed[first],
                      firstHost.withCString({ from in destination.withCString { link(from, $0) } }) == 0 else {
                    throw RootfsError("\(label): cannot make the hard link \(guest): \(FS.errnoText())")
                }
                return
            }
            switch item.fileType {
            case FileType.reg:
                let fd = destination.withCString { open($0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
                guard fd >= 0 else { throw RootfsError("cannot create \(guest) in the rootfs: \(FS.errnoText())") }
                defer { close(fd) }
                try item.copyContent(buffer: buffer) { chunk in try FS.writeAll(chunk, to: fd, name: "\(guest) in the rootfs") }
                placed[item.path] = destination
            case FileType.lnk:
                guard (item.linkTarget ?? []).withCString({ target in destination.withCString { symlink(target, $0) } }) == 0 else {
                    throw RootfsError("cannot create the link \(guest) in the rootfs: \(FS.errnoText())")
                }
            default:
                guard destination.withCString({ mknod($0, mode_t(item.mode & ~0o7777) | 0o600, dev_t(item.rdev)) }) == 0 else {
                    throw RootfsError("\(label): cannot create the special file \(guest): \(FS.errnoText())")
                }
            }
            try TreeExtractor.setMetadata(destination, item, keepOwnership: keepOwnership)
        }
        for (host, item) in directories.reversed() {
            try TreeExtractor.setMetadata(host, item, keepOwnership: keepOwnership)
        }
    }

    private static func isDirectory(_ path: [UInt8]) -> Bool {
        var st = stat()
        return path.withCString { stat($0, &st) } == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }
}

/// Copies everything from `input` to `output` (both stay open: the caller owns them)
/// through OwnedFileDescriptor's one read and write loop.
func copyAll(from input: Int32, to output: Int32, what: String) throws {
    var source = OwnedFileDescriptor(taking: input, name: what)
    var destination = OwnedFileDescriptor(taking: output, name: "a copy of \(what)")
    defer { _ = source.release(); _ = destination.release() }
    try destination.copyAll(from: source)
}
