import RootfsSupport
import Foundation

/// A prototype file for `mkfs.xfs -p` (xfsprogs' mkfs/proto.c) describing a tree, with
/// every regular file's content staged under a name of ours.
///
/// The protofile is text a tool interprets, and guest names go into it, so every word
/// written is checked against the parser: proto.c splits words on space, tab and newline,
/// skips a word starting with ':' to the end of the line (a comment), ends a directory
/// with the name "$", and opens the content of a regular file by the path that follows
/// it. So a guest name or link target holding white space or any control byte, starting
/// with ':', or (for a name) being "$", is refused: each word we write is then exactly
/// one token in the place we put it. Content is never named by a guest path: the file
/// tokens are `f/N`, relative to the staging directory mkfs.xfs runs in (so not even
/// the output's own path, which may hold spaces or commas, reaches the protofile).
///
/// What the format cannot say, and what we do about it:
/// - the sticky bit (the mode word is type, u, g and three octal digits): such entries
///   (Debian's /tmp, /var/tmp) are listed in `sticky` and set afterwards by xfs_db;
/// - hard links: each name becomes its own inode with the same content (staged once);
/// - sockets: refused; extended attributes: not carried (TreeItem has none).
struct XfsProtofile {
    /// The protofile's bytes.
    var text: [UInt8] = []
    /// Guest paths ("/tmp") and full modes of entries with the sticky bit, for xfs_db.
    var sticky: [(path: [UInt8], mode: UInt32)] = []
    /// Content bytes, rounded up to blocks, plus a block per directory and long symlink.
    var dataBytes: Int64 = 0
    var inodes = 0

    /// proto.c's newregfile reads a whole file into one buffer with an `int` length.
    static let maxFileBytes = Int64(Int32.max)
    /// XFS names and symlink targets: MAXNAMELEN 255, XFS_SYMLINK_MAXLEN 1024.
    static let maxNameBytes = 255
    static let maxLinkBytes = 1024

    /// Writes the protofile text for `source` and stages each regular file's content as
    /// `staging/f/N` (N counts files; hard links reuse their first name's N).
    static func make(source: TreeSource, staging: String, blockSize: Int) throws -> XfsProtofile {
        var proto = XfsProtofile()
        let files = staging + "/f"
        try FS.makeDirectories(files)
        var staged: [[UInt8]: (number: Int, size: Int64)] = [:]
        var open: [[UInt8]] = []
        var count = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        let block = Int64(blockSize)
        func line(_ words: [UInt8]...) { proto.text += Array(words.joined(separator: [32])); proto.text.append(10) }
        // "Skipped for compatibility": a boot image name and two numbers.
        line(Array("rootfs".utf8), [48], [48])
        try source.walk { item in
            try Task.checkCancellation()
            proto.inodes += 1
            if item.isRoot {
                guard open.isEmpty else { throw RootfsError("the tree's root came twice in \(source)") }
                try line(modeWord(item, path: [47], proto: &proto), try owner(item.uid, item), try owner(item.gid, item))
                open.append([46])
                proto.dataBytes += block
                return
            }
            if open.isEmpty {
                // A source without a root entry: the root mkfs.xfs would make by default.
                line(Array("d--755".utf8), [48], [48])
                open.append([46])
            }
            let parent = parentPath(item.path)
            while let top = open.last, top != parent {
                line([36])
                open.removeLast()
            }
            guard !open.isEmpty else {
                throw RootfsError("\(source) lists \(debugName(item.path)) outside its parent directory", hint: "this is a bug in the tree reader")
            }
            let name = Array(item.path.split(separator: 47).last ?? [])
            let guestPath = [47] + item.path
            try checkWord(name, isName: true, path: guestPath)
            let mode = try modeWord(item, path: guestPath, proto: &proto)
            let uid = try owner(item.uid, item), gid = try owner(item.gid, item)
            switch item.fileType {
            case FileType.reg:
                let number: Int, size: Int64
                if let first = item.hardLinkTo, let known = staged[first] {
                    (number, size) = known
                } else {
                    guard item.size <= maxFileBytes else {
                        throw RootfsError("\(debugName(guestPath)) is \(item.size) bytes: mkfs.xfs reads a file of its prototype into memory with a 32-bit length, so xfs cannot hold files of 2 GiB or more here",
                                          hint: "write ext4 (--fs ext4) or erofs, which take files of any size")
                    }
                    count += 1
                    (number, size) = (count, item.size)
                    staged[item.path] = (number, size)
                    try stage(item, to: files + "/\(number)", buffer: &buffer)
                }
                // Each name of a hard link is its own inode with the content (proto.c has no links).
                proto.dataBytes = try Checked.add(proto.dataBytes, roundUp(size, block), "the size of the tree")
                line(name, mode, uid, gid, Array("f/\(number)".utf8))
            case FileType.dir:
                line(name, mode, uid, gid)
                open.append(item.path)
                proto.dataBytes += block
            case FileType.lnk:
                let target = item.linkTarget ?? []
                try checkWord(target, isName: false, path: guestPath)
                guard target.count < maxLinkBytes else {
                    throw RootfsError("the symbolic link \(debugName(guestPath)) has a target of \(target.count) bytes: xfs holds at most \(maxLinkBytes - 1)")
                }
                line(name, mode, uid, gid, target)
                if target.count > 156 { proto.dataBytes += block }
            case FileType.chr, FileType.blk:
                // glibc's dev_t encoding; xfs stores IRIX_MKDEV(major, minor): 14 and 18 bits.
                let major = (item.rdev >> 8) & 0xfff | ((item.rdev >> 32) & ~0xfff)
                let minor = (item.rdev & 0xff) | ((item.rdev >> 12) & ~0xff)
                guard major < 1 << 14, minor < 1 << 18 else {
                    throw RootfsError("the device \(debugName(guestPath)) (\(major):\(minor)) has a number xfs cannot store (major below 16384, minor below 262144)")
                }
                line(name, mode, uid, gid, Array(String(major).utf8), Array(String(minor).utf8))
            case FileType.ifo:
                line(name, mode, uid, gid)
            default:
                throw RootfsError("\(debugName(guestPath)) is a socket: an xfs prototype file cannot hold sockets",
                                  hint: "remove it from the tree (a socket is made by the program that listens on it), or write ext4 (--fs ext4)")
            }
        }
        if open.isEmpty { line(Array("d--755".utf8), [48], [48]); open.append([46]) }
        for _ in open { line([36]) }
        return proto
    }

    /// A guest word (a name or a link target) refused unless proto.c reads it back as exactly that one token.
    static func checkWord(_ word: [UInt8], isName: Bool, path: [UInt8]) throws {
        let what = isName ? "its name" : "its link target"
        var problem: String?
        if word.isEmpty { problem = "\(what) is empty" }
        else if let bad = word.first(where: { $0 <= 0x20 || $0 == 0x7f }) {
            problem = bad == 0x20 ? "\(what) holds a space" : String(format: "\(what) holds the control byte 0x%02x", bad)
        }
        else if word[0] == UInt8(ascii: ":") { problem = "\(what) starts with ':' (a comment in the prototype file)" }
        else if isName && word == [36] { problem = "\(what) is '$' (the end of a directory in the prototype file)" }
        else if isName && word.count > maxNameBytes { problem = "\(what) is longer than \(maxNameBytes) bytes" }
        guard let problem else { return }
        throw RootfsError("\(debugName(path)) cannot be written to xfs: \(problem)",
                          hint: "mkfs.xfs fills xfs from a prototype file of words separated by white space, which cannot carry such a name safely; rename the entry, or write ext4 (--fs ext4) or erofs, which take any name")
    }

    /// proto.c's mode word: type, 'u' (setuid), 'g' (setgid), three octal digits.
    static func modeWord(_ item: TreeItem, path: [UInt8], proto: inout XfsProtofile) throws -> [UInt8] {
        let type: String
        switch item.fileType {
        case FileType.reg: type = "-"
        case FileType.dir: type = "d"
        case FileType.lnk: type = "l"
        case FileType.chr: type = "c"
        case FileType.blk: type = "b"
        case FileType.ifo: type = "p"
        default: type = "?"  // refused by the caller (sockets)
        }
        if item.mode & 0o1000 != 0 {
            guard path.allSatisfy(isPlainPathByte) else {
                throw RootfsError("\(debugName(path)) has the sticky bit, which xfs gets from xfs_db after mkfs.xfs, and its path holds bytes other than letters, digits and ._+@-",
                                  hint: "rename it, clear its sticky bit, or write ext4 (--fs ext4)")
            }
            proto.sticky.append((path, item.mode))
        }
        let octal = String(item.mode & 0o777, radix: 8)
        return Array((type + (item.mode & 0o4000 != 0 ? "u" : "-") + (item.mode & 0o2000 != 0 ? "g" : "-")
                      + String(repeating: "0", count: 3 - octal.count) + octal).utf8)
    }

    /// The bytes xfs_db's command words take literally (a path given to its `path` command).
    static func isPlainPathByte(_ b: UInt8) -> Bool {
        (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122)
            || b == 47 || b == 46 || b == 95 || b == 43 || b == 64 || b == 45
    }

    /// proto.c reads owners with strtoll and stores them through an `int`.
    static func owner(_ id: UInt32, _ item: TreeItem) throws -> [UInt8] {
        guard id <= UInt32(Int32.max) else {
            throw RootfsError("\(debugName([47] + item.path)) is owned by id \(id): mkfs.xfs's prototype file takes ids up to \(Int32.max)")
        }
        return Array(String(id).utf8)
    }

    /// Copies a regular file's content to a staging file we created (never an existing name).
    static func stage(_ item: TreeItem, to path: String, buffer: inout [UInt8]) throws {
        let out = try OwnedFileDescriptor(path: path, flags: O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o600)
        try buffer.withUnsafeMutableBytes { raw in
            try item.copyContent(buffer: raw) { chunk in try out.writeAll(chunk) }
        }
    }
}

/// xfs by `mkfs.xfs -p` from a protofile we write (see XfsProtofile), on a plain file:
/// no root, no loop device, no mount. Owners, modes and devices come from the tree
/// source (a tar's, even when an ordinary user runs this), not from an extracted
/// directory. Kata's `mkfs.xfs -m reflink=0` (DAX and reflink exclude each other).
/// Not reproducible with xfsprogs 6.1: mkfs.xfs stamps every inode with the time it
/// runs and gives each a random generation number (the UUID is ours).
public struct XfsFilesystem: FilesystemWriter {
    public var readsDirectory: Bool { false }
    /// mkfs.xfs 6.1 refuses smaller data sections ("Filesystem must be larger than 300MB").
    static let minimumBytes: Int64 = 300 << 20
    /// XFS labels hold 12 bytes.
    static let maxLabelBytes = 12

    public func write(into target: FilesystemTarget, disk: DiskImageWriter) async throws -> FilesystemWritten {
        for tool in ["mkfs.xfs", "xfs_db"] where ProcessRunner.which(tool) == nil {
            throw RootfsError("\(tool) is not installed; it writes the xfs file system", hint: "install xfsprogs (apt-get install xfsprogs)")
        }
        guard disk.label.utf8.count <= Self.maxLabelBytes else {
            throw RootfsError("the label '\(disk.label)' is longer than the \(Self.maxLabelBytes) bytes an xfs label holds",
                              hint: "give a shorter label, or write ext4 (--fs ext4)")
        }
        let staging = try FS.makeSiblingTemporaryDirectory(for: target.output)
        defer { FS.remove(staging) }
        let proto = try XfsProtofile.make(source: target.source, staging: staging, blockSize: disk.blockSize)
        try Data(proto.text).write(to: URL(fileURLWithPath: staging + "/proto"))
        // Data, inodes (512 bytes, allocated 64 at a time), the log, and the free space asked for.
        let free = Int64(disk.freeSpaceMiB) << 20
        let data = try Checked.add(proto.dataBytes, proto.dataBytes / 10, "the xfs size")
        var bytes = try Checked.add(data, Int64(proto.inodes) * 1024 + free + (96 << 20), "the xfs size")
        bytes = roundUp(max(bytes, Self.minimumBytes), 1 << 20)
        let command = ToolCommand("mkfs.xfs", [
            "-q", "-f", "-m", "reflink=0,uuid=\(target.uuid)", "-b", "size=\(disk.blockSize)", "-L", disk.label,
            "-p", "proto", "-d", "file,name=fs.xfs,size=\(bytes)",
        ], workingDirectory: staging)
        do {
            try await disk.runner.capture(command)
        } catch let failure as ToolFailure {
            throw RootfsError("mkfs.xfs could not write the file system of \(target.output) (\(failure.status))",
                              hint: failure.outputTail.contains { $0.contains("space") } ? "the tree did not fit in the computed size; add room with --free-space MB" : nil,
                              details: failure.outputTail)
        }
        let fsFile = staging + "/fs.xfs"
        if !proto.sticky.isEmpty {
            // The sticky bits the protofile cannot say; xfs_db recomputes the inode's CRC.
            var args = ["-x"]
            for entry in proto.sticky {
                args += ["-c", "path " + String(decoding: entry.path, as: UTF8.self), "-c", "write core.mode 0" + String(entry.mode, radix: 8)]
            }
            do {
                try await disk.runner.capture(ToolCommand("xfs_db", args + ["fs.xfs"], workingDirectory: staging))
            } catch let failure as ToolFailure {
                throw RootfsError("xfs_db could not set the sticky bits in \(target.output) (\(failure.status))", details: failure.outputTail)
            }
        }
        let size = FS.fileSize(fsFile)
        try target.size(filesystemBytes: size)
        try FS.copyFile(fsFile, into: target.fd, at: target.offset)
        return FilesystemWritten(filesystemBytes: size, inputBytes: proto.dataBytes)
    }
}
