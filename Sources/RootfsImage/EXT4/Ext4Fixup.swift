import RootfsSupport
import Foundation

/// What `mke2fs -d` cannot get right by itself, set afterwards with one
/// `debugfs -w -f` batch:
/// - time stamps: mke2fs copies each file's atime and ctime from the source
///   directory (atime changes when a file is read, ctime cannot be set), so with
///   SOURCE_DATE_EPOCH every inode gets atime = ctime = crtime = the epoch and
///   mtime = min(mtime, epoch), nanoseconds 0;
/// - ownership (rootless builds): an ordinary user cannot chown the extracted
///   tree, so owners, modes (setuid/setgid bits) and device nodes come from the
///   tree source (a tar keeps them) instead of from the temporary directory.
public struct Ext4Fixup: Sendable {
    /// Clamp and normalise times to this epoch.
    public var epoch: Int?
    /// Set uid, gid and mode of every inode from the source, and create the device nodes the extracted directory lacks.
    public var ownership: Bool
    public var runner = ProcessRunner()

    public init(epoch: Int?, ownership: Bool) {
        self.epoch = epoch
        self.ownership = ownership
    }

    public var isNeeded: Bool { epoch != nil || ownership }

    /// A guest path as one debugfs word (see `DebugfsCommand`: quoted, NUL/LF/CR refused).
    static func quote(_ path: [UInt8]) throws -> [UInt8] {
        try DebugfsCommand.quote(path, what: "the entry \(debugName(path))")
    }

    /// The debugfs commands, one per line, in the source's canonical order.
    /// `materializedDevices`: the directory mke2fs read holds real device nodes (root extraction);
    /// otherwise it holds empty placeholder files in their place.
    public func script(for source: TreeSource, materializedDevices: Bool, deviceInodes: [[UInt8]: Int] = [:]) throws -> [UInt8] {
        var out: [UInt8] = []
        // Every line starts with a command word of ours; guest paths are quoted words.
        // A line fgets would split is refused (DebugfsCommand.maximumLineLength).
        func line(_ words: [UInt8]...) throws {
            let text = Array(words.joined(separator: [32]))
            guard text.count < DebugfsCommand.maximumLineLength else {
                throw RootfsError("a path of \(text.count) bytes is too long to be passed to debugfs",
                                  hint: "use the native ext4 writer (the default), which takes any name")
            }
            out += text
            out.append(10)
        }
        try source.walk { item in
            let guestPath: [UInt8] = item.isRoot ? [47] : [47] + item.path
            let q = try Self.quote(guestPath)
            let isDevice = item.fileType == FileType.chr || item.fileType == FileType.blk
            // A hard link's later names share the first name's inode, already fixed.
            if item.hardLinkTo != nil { return }
            if ownership && isDevice && !materializedDevices {
                // The extraction left an empty placeholder file in the device's place (so that the
                // inode numbers are those of a root build); make it the device node mke2fs would have
                // made: no extent flag, the device number in i_block as ext2fs encodes it.
                let major = (item.rdev >> 8) & 0xfff | ((item.rdev >> 32) & ~0xfff)
                let minor = (item.rdev & 0xff) | ((item.rdev >> 12) & ~0xff)
                let blocks: [UInt64] = major < 256 && minor < 256
                    ? [major * 256 + minor, 0, 0]
                    : [0, (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12), 0]
                try line(Array("sif".utf8), q, Array("flags".utf8), Array("0".utf8))
                for (i, b) in blocks.enumerated() {
                    try line(Array("sif".utf8), q, Array("block[\(i)]".utf8), Array(String(b).utf8))
                }
                try line(Array("sif".utf8), q, Array("mode".utf8), Array(("0" + String(item.mode, radix: 8)).utf8))
                // The directory entry still says "regular file": unlinking and linking the same
                // inode again rewrites it in place with the device's type.
                if let inode = deviceInodes[item.path] {
                    let parent = parentPath(item.path)
                    try line(Array("cd".utf8), try Self.quote([47] + (parent == [46] ? [] : parent)))
                    let name = try Self.quote(Array(item.path.split(separator: 47).last ?? []))
                    try line(Array("unlink".utf8), name)
                    try line(Array("link".utf8), Array("<\(inode)>".utf8), name)
                    try line(Array("cd".utf8), [47])
                }
            }
            let sif = Array("sif".utf8)
            if ownership {
                try line(sif, q, Array("uid".utf8), Array(String(item.uid).utf8))
                try line(sif, q, Array("gid".utf8), Array(String(item.gid).utf8))
                if item.fileType != FileType.lnk {
                    try line(sif, q, Array("mode".utf8), Array(("0" + String(item.mode, radix: 8)).utf8))
                }
            }
            if let epoch {
                let mtime = min(item.mtime, epoch)
                for (field, value) in [("atime", epoch), ("ctime", epoch), ("crtime", epoch), ("mtime", mtime)] {
                    try line(sif, q, Array(field.utf8), Array("@\(value)".utf8))
                    try line(sif, q, Array((field + "_extra").utf8), Array("0".utf8))
                }
            }
        }
        return out
    }

    /// Applies the fixes to the ext4 file system at `offset` of `image`.
    public func apply(source: TreeSource, image: String, offset: Int64, materializedDevices: Bool, scratch: String) async throws {
        guard isNeeded else { return }
        var deviceInodes: [[UInt8]: Int] = [:]
        if ownership && !materializedDevices {
            deviceInodes = try await inodes(of: devicePaths(source), image: image, offset: offset)
        }
        let script = try self.script(for: source, materializedDevices: materializedDevices, deviceInodes: deviceInodes)
        let cmdFile = FS.siblingTemporaryPath(for: scratch) + ".debugfs"
        defer { unlink(cmdFile) }
        guard FileManager.default.createFile(atPath: cmdFile, contents: Data(script)) else {
            throw RootfsError("cannot write \(cmdFile): \(FS.errnoText())")
        }
        var env: [String: String] = [:]
        if let epoch { env["E2FSPROGS_FAKE_TIME"] = String(epoch) }
        let output: ToolOutput
        do {
            output = try await runner.capture(ToolCommand("debugfs", ["-w", "-f", cmdFile, "\(image)?offset=\(offset)"], environment: env))
        } catch let failure as ToolFailure {
            throw RootfsError("debugfs could not fix owners and times in the file system of the image (\(failure.status))",
                              details: failure.outputTail)
        }
        // debugfs reports failed commands on stderr and still exits 0.
        let problems = output.standardError.split(separator: "\n").filter { !$0.hasPrefix("debugfs ") }
        if !problems.isEmpty {
            throw RootfsError("debugfs could not fix owners and times in the file system of the image",
                              hint: "the image was not written; report this with the lines below",
                              details: problems.prefix(10).map(String.init))
        }
        try Self.resetWriteCounter(image: image, offset: offset)
    }

    func devicePaths(_ source: TreeSource) throws -> [[UInt8]] {
        var out: [[UInt8]] = []
        try source.walk { item in
            if (item.fileType == FileType.chr || item.fileType == FileType.blk) && item.hardLinkTo == nil { out.append(item.path) }
        }
        return out
    }

    /// The inode numbers of some paths (one read-only debugfs run).
    func inodes(of paths: [[UInt8]], image: String, offset: Int64) async throws -> [[UInt8]: Int] {
        guard !paths.isEmpty else { return [:] }
        var script: [UInt8] = []
        for p in paths {
            let what = "the device node \(debugName([47] + p))"
            script += try DebugfsCommand("stat").quoted([47] + p, what: what).line(what: what)
        }
        let cmdFile = FS.siblingTemporaryPath(for: image) + ".stat"
        defer { unlink(cmdFile) }
        FileManager.default.createFile(atPath: cmdFile, contents: Data(script))
        let out = try await runner.capture(ToolCommand("debugfs", ["-f", cmdFile, "\(image)?offset=\(offset)"],
                                                       environment: ["DEBUGFS_PAGER": "__none__", "PAGER": "__none__"])).standardOutput
        let numbers = out.split(separator: "\n").filter { $0.hasPrefix("Inode: ") }.compactMap {
            Int($0.dropFirst("Inode: ".count).prefix { $0.isNumber })
        }
        guard numbers.count == paths.count else {
            throw RootfsError("debugfs did not find every device node in the image (\(numbers.count) of \(paths.count))")
        }
        return Dictionary(zip(paths, numbers), uniquingKeysWith: { a, _ in a })
    }

    /// debugfs adds what it wrote to the superblock's s_kbytes_written, which then
    /// depends on how many commands ran: set it to 0 and recompute the checksum.
    static func resetWriteCounter(image: String, offset: Int64) throws {
        let fd = open(image, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw RootfsError("cannot open \(image): \(FS.errnoText())") }
        defer { close(fd) }
        var sb = [UInt8](repeating: 0, count: 1024)
        guard pread(fd, &sb, 1024, off_t(offset + 1024)) == 1024, sb[56] == 0x53, sb[57] == 0xef else {
            throw RootfsError("\(image): no ext4 superblock at offset \(offset)")
        }
        let stored = UInt32(sb[1020]) | UInt32(sb[1021]) << 8 | UInt32(sb[1022]) << 16 | UInt32(sb[1023]) << 24
        let checksummed = CRC32C.checksum(sb[0..<1020]) == stored
        for i in 0x178..<0x180 { sb[i] = 0 }
        if checksummed {
            let c = CRC32C.checksum(sb[0..<1020])
            for i in 0..<4 { sb[1020 + i] = UInt8(truncatingIfNeeded: c >> (8 * UInt32(i))) }
        }
        try FS.write(sb, to: fd, at: offset + 1024, name: image)
    }
}
