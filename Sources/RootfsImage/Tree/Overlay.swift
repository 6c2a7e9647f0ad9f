import RootfsSupport
import Foundation

/// One composition step applied to a built tree before the writers run.
public enum OverlaySpec: Sendable, Equatable, CustomStringConvertible {
    /// A directory or tar archive whose content is laid over the tree's root.
    case overlay(String)
    /// One host file (or directory) copied to a guest path (LinuxKit's `files:`). The
    /// guest path is bytes: a name that is not UTF-8 arrives exactly as given.
    case file(guestPath: [UInt8], hostPath: String)

    /// Parses `--file GUEST_PATH=HOST_PATH`.
    public static func parseFile(_ text: String) throws -> OverlaySpec {
        try parseFile(bytes: Array(text.utf8))
    }

    /// Parses `--file GUEST_PATH=HOST_PATH` from the argument's own bytes (the CLI reads them
    /// from argv: Swift's CommandLine.arguments repairs invalid UTF-8 into U+FFFD).
    public static func parseFile(bytes: [UInt8]) throws -> OverlaySpec {
        let text = String(decoding: bytes, as: UTF8.self)  // for messages only
        let slash = UInt8(ascii: "/")
        guard let eq = bytes.firstIndex(of: UInt8(ascii: "=")), bytes.first == slash, eq != bytes.count - 1 else {
            throw RootfsError("--file \(text): expected GUEST_PATH=HOST_PATH with an absolute guest path",
                              hint: "for example --file /etc/motd=./motd")
        }
        let guest = Array(bytes[..<eq])
        if guest.split(separator: slash).contains(where: { $0.elementsEqual([46, 46]) }) {
            throw RootfsError("--file \(text): the guest path must not hold '..'")
        }
        return .file(guestPath: guest, hostPath: String(decoding: bytes[(eq + 1)...], as: UTF8.self))
    }

    public var description: String {
        switch self {
        case .overlay(let p): return "overlay \(p)"
        case .file(let g, let h): return "file \(String(decoding: g, as: UTF8.self))=\(h)"
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
        case .file(let guestBytes, let hostPath):
            let absolute = FS.absolute(hostPath)
            let guest = String(decoding: guestBytes, as: UTF8.self)  // for messages only
            let prefix = guestBytes.split(separator: UInt8(ascii: "/")).map(Array.init)
            if FS.isDirectory(absolute) {
                try apply(.directory(absolute), at: prefix, forceRoot: true, label: "--file \(guest)=\(hostPath)")
            } else if FS.isRegularFile(absolute) {
                try copyFile(host: absolute, guest: guestBytes)
            } else {
                throw RootfsError("--file \(guest)=\(hostPath): \(hostPath) is not a readable file or directory")
            }
        }
    }

    private func copyFile(host: String, guest guestBytes: [UInt8]) throws {
        let guest = String(decoding: guestBytes, as: UTF8.self)  // for messages only
        var st = stat()
        guard stat(host, &st) == 0 else { throw RootfsError("cannot read \(host): \(FS.errnoText())") }
        let (parent, name) = try tree.parentForCreating(bytes: guestBytes)
        try removeNonDirectory(parent, name, guest: guest, label: "--file \(guest)")
        let input = open(host, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw RootfsError("cannot read \(host): \(FS.errnoText())") }
        defer { close(input) }
        let output = name.withCString { openat(parent.fd, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
        guard output >= 0 else { throw RootfsError("cannot create \(guest) in the rootfs: \(FS.errnoText())") }
        defer { close(output) }
        try copyAll(from: input, to: output, what: host)
        let item = TreeItem(path: [], mode: UInt32(st.st_mode), uid: 0, gid: 0, mtime: st.st_mtim.tv_sec, size: 0,
                            linkTarget: nil, hardLinkTo: nil, nlink: 1, rdev: 0)
        try TreeExtractor.setMetadata(at: parent.fd, name, item, shown: guest, keepOwnership: keepOwnership)
    }

    /// Removes what sits at `name` in `parent` if it is not a directory (a file or a link: replaced, not followed).
    private func removeNonDirectory(_ parent: TreeDirectory, _ name: [UInt8], guest: String, label: String) throws {
        var st = stat()
        guard name.withCString({ fstatat(parent.fd, $0, &st, AT_SYMLINK_NOFOLLOW) }) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            throw RootfsError("\(label): \(guest) is a directory in the rootfs and cannot be replaced by a file",
                              hint: "remove it in the hook, or put the file elsewhere")
        }
        guard name.withCString({ unlinkat(parent.fd, $0, 0) }) == 0 else { throw RootfsError("cannot replace \(guest) in the rootfs: \(FS.errnoText())") }
    }

    /// Lays a tar archive over the tree's root, keeping its owners (Kata's tarballs: the agent, CoCo, pause, hooks).
    public func applyArchive(_ path: String, label: String) throws {
        try apply(.archive(path), at: [], forceRoot: false, label: label)
    }

    /// Every guest path is bytes: a name that is not UTF-8 is written exactly (two such
    /// names never collide into one U+FFFD spelling). Every entry is made relative to its
    /// parent's open descriptor (GuestTree.parentForCreating), so a path longer than
    /// PATH_MAX is laid over as whole as any other.
    private func apply(_ source: TreeSource, at prefix: [[UInt8]], forceRoot: Bool, label: String) throws {
        // Guest paths of the regular files placed, by source path: the targets of hard links.
        var placed: [[UInt8]: [UInt8]] = [:]
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        // Guest paths, not open descriptors: an overlay of many directories must not run out of them.
        var directories: [([UInt8], TreeItem)] = []
        let slash = UInt8(ascii: "/")
        try source.walk { original in
            var item = original
            if forceRoot { item.uid = 0; item.gid = 0 }
            let parts = prefix + (item.isRoot ? [] : [item.path])
            if parts.isEmpty { return }  // the overlay's root does not change the tree's root
            let guestBytes = [slash] + Array(parts.joined(separator: [slash]))
            let guest = String(decoding: guestBytes, as: UTF8.self)  // for messages only
            let (parent, name) = try tree.parentForCreating(bytes: guestBytes)
            var st = stat()
            let present = name.withCString { fstatat(parent.fd, $0, &st, AT_SYMLINK_NOFOLLOW) } == 0
            if item.fileType == FileType.dir {
                // An existing directory is kept (and takes the overlay's mode); a link to one,
                // as /lib -> usr/lib, is kept as it is; missing ones are made.
                if present && (st.st_mode & S_IFMT) == S_IFDIR {
                    directories.append((guestBytes, item))
                    return
                }
                if present && (st.st_mode & S_IFMT) == S_IFLNK, try tree.openDirectory(bytes: guestBytes) != nil { return }
                try removeNonDirectory(parent, name, guest: guest, label: label)
                guard name.withCString({ mkdirat(parent.fd, $0, 0o700) }) == 0 else {
                    throw RootfsError("cannot create \(guest) in the rootfs: \(FS.errnoText())")
                }
                directories.append((guestBytes, item))
                return
            }
            try removeNonDirectory(parent, name, guest: guest, label: label)
            if let first = item.hardLinkTo {
                guard let firstGuest = placed[first] else {
                    throw RootfsError("\(label): cannot make the hard link \(guest): its target \(String(decoding: first, as: UTF8.self)) was not placed")
                }
                let (firstParent, firstName) = try tree.parentForCreating(bytes: firstGuest)
                guard firstName.withCString({ from in name.withCString { linkat(firstParent.fd, from, parent.fd, $0, 0) } }) == 0 else {
                    throw RootfsError("\(label): cannot make the hard link \(guest): \(FS.errnoText())")
                }
                return
            }
            switch item.fileType {
            case FileType.reg:
                let fd = name.withCString { openat(parent.fd, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
                guard fd >= 0 else { throw RootfsError("cannot create \(guest) in the rootfs: \(FS.errnoText())") }
                defer { close(fd) }
                try item.copyContent(buffer: buffer) { chunk in try FS.writeAll(chunk, to: fd, name: "\(guest) in the rootfs") }
                placed[item.path] = guestBytes
            case FileType.lnk:
                guard (item.linkTarget ?? []).withCString({ target in name.withCString { symlinkat(target, parent.fd, $0) } }) == 0 else {
                    throw RootfsError("cannot create the link \(guest) in the rootfs: \(FS.errnoText())")
                }
            default:
                guard name.withCString({ mknodat(parent.fd, $0, mode_t(item.mode & ~0o7777) | 0o600, dev_t(item.rdev)) }) == 0 else {
                    throw RootfsError("\(label): cannot create the special file \(guest): \(FS.errnoText())")
                }
            }
            try TreeExtractor.setMetadata(at: parent.fd, name, item, shown: guest, keepOwnership: keepOwnership)
        }
        // Directory modes and times last, deepest first (a read-only directory is filled before).
        for (guestBytes, item) in directories.reversed() {
            let (parent, name) = try tree.parentForCreating(bytes: guestBytes)
            try TreeExtractor.setMetadata(at: parent.fd, name, item, shown: String(decoding: guestBytes, as: UTF8.self), keepOwnership: keepOwnership)
        }
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
