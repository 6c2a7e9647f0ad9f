import RootfsSupport
import Foundation

/// One object in a tree, as the writer sees it.
public struct TreeEntry {
    /// The path relative to the tree's root, as raw bytes (names need not be UTF-8); "." is the root.
    public var path: [UInt8]
    public var stat: stat
    /// The link target, for symbolic links.
    public var linkTarget: [UInt8]?
    /// The directory file descriptor holding the entry, and its name in it (content is read through these).
    let parentFD: Int32
    let name: [UInt8]

    public var fileType: mode_t { stat.st_mode & S_IFMT }
    public var pathString: String { String(decoding: path, as: UTF8.self) }

    /// Opens a regular file's content without following links. O_NONBLOCK: a FIFO
    /// swapped in since the walk's fstatat would block open(2) for ever; the descriptor
    /// is then checked to be the very file that was walked (same device, inode and type).
    public func openContent() throws -> Int32 {
        let fd = name.withCString { openat(parentFD, $0, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC) }
        guard fd >= 0 else { throw RootfsError("cannot read \(pathString) in the tree: \(FS.errnoText())") }
        var now = Foundation.stat()
        guard fstat(fd, &now) == 0, (now.st_mode & S_IFMT) == S_IFREG, now.st_ino == stat.st_ino, now.st_dev == stat.st_dev else {
            close(fd)
            throw RootfsError("\(pathString) in the tree changed while it was read (it is no longer the regular file walked)",
                              hint: "stop whatever is writing to the tree and run again")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        return fd
    }
}

/// Walks a directory tree in a stable order (names sorted bytewise, parents
/// before children), never following symbolic links, one directory open per
/// level: memory does not grow with the tree.
public struct TreeWalker {
    public let root: String

    public init(root: String) { self.root = root }

    public func walk(_ visit: (TreeEntry) throws -> Void) throws {
        let rootFD = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootFD >= 0 else { throw RootfsError("cannot open the tree \(root): \(FS.errnoText())") }
        defer { close(rootFD) }
        try refuseMounts(below: rootFD)
        var st = stat()
        guard fstat(rootFD, &st) == 0 else { throw RootfsError("cannot stat \(root): \(FS.errnoText())") }
        try visit(TreeEntry(path: Array(".".utf8), stat: st, linkTarget: nil, parentFD: rootFD, name: Array(".".utf8)))
        try walkDirectory(fd: rootFD, prefix: [], visit)
    }

    /// A /proc, /dev or host directory mounted inside the tree (a chroot left set up, a
    /// bind mount) would be read as the guest's files: the host's processes or secrets in
    /// the image. Refused with the list, from the kernel's mount table compared as bytes
    /// against the path of the directory already open (no name is resolved twice).
    /// The same refusal for a directory a tool reads itself (mkfs.erofs, mksquashfs, mke2fs -d).
    public static func refuseMounts(inside root: String) throws {
        let fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw RootfsError("cannot open the tree \(root): \(FS.errnoText())") }
        defer { close(fd) }
        try TreeWalker(root: root).refuseMounts(below: fd)
    }

    private func refuseMounts(below rootFD: Int32) throws {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/fd/\(rootFD)", &buffer, buffer.count)
        guard n > 0, n < buffer.count else { return }
        let mounts = FS.mountPoints(underReal: Array(buffer[..<n])).map { String(decoding: $0, as: UTF8.self) }
        guard mounts.isEmpty else {
            throw RootfsError("directory \(root) has \(mounts.count) file system(s) mounted inside it: \(mounts.joined(separator: ", "))",
                              hint: "unmount them first (umount -R \(mounts[0])): rootfs never reads a tree through a mount, which would put host files in the image")
        }
    }

    private func walkDirectory(fd: Int32, prefix: [UInt8], _ visit: (TreeEntry) throws -> Void) throws {
        for name in try sortedNames(fd: fd, prefix: prefix) {
            var st = stat()
            let rc = name.withCString { fstatat(fd, $0, &st, AT_SYMLINK_NOFOLLOW) }
            let path = prefix.isEmpty ? name : prefix + [UInt8(ascii: "/")] + name
            guard rc == 0 else {
                throw RootfsError("cannot stat \(String(decoding: path, as: UTF8.self)) in \(root): \(FS.errnoText())")
            }
            var target: [UInt8]?
            if (st.st_mode & S_IFMT) == S_IFLNK {
                target = try readLink(fd: fd, name: name, path: path)
            }
            try visit(TreeEntry(path: path, stat: st, linkTarget: target, parentFD: fd, name: name))
            if (st.st_mode & S_IFMT) == S_IFDIR {
                let child = name.withCString { openat(fd, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
                guard child >= 0 else {
                    throw RootfsError("cannot open \(String(decoding: path, as: UTF8.self)) in \(root): \(FS.errnoText())")
                }
                defer { close(child) }
                try walkDirectory(fd: child, prefix: path, visit)
            }
        }
    }

    private func sortedNames(fd: Int32, prefix: [UInt8]) throws -> [[UInt8]] {
        let dupFD = dup(fd)
        guard dupFD >= 0, let dir = fdopendir(dupFD) else {
            throw RootfsError("cannot list \(String(decoding: prefix, as: UTF8.self)) in \(root): \(FS.errnoText())")
        }
        defer { closedir(dir) }
        rewinddir(dir)
        var names: [[UInt8]] = []
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: &ent.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
            if name == [46] || name == [46, 46] { continue }
            names.append(name)
        }
        names.sort { $0.lexicographicallyPrecedes($1) }
        return names
    }

    private func readLink(fd: Int32, name: [UInt8], path: [UInt8]) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = name.withCString { cname in
            buffer.withUnsafeMutableBytes { readlinkat(fd, cname, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
        }
        guard n >= 0 else {
            throw RootfsError("cannot read the link \(String(decoding: path, as: UTF8.self)): \(FS.errnoText())")
        }
        return Array(buffer.prefix(n))
    }
}
