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

    /// debugfs reads one command a line and splits words at blanks outside double
    /// quotes (a quote inside is doubled). A newline cannot be expressed.
    static func quote(_ path: [UInt8]) throws -> [UInt8] {
        if path.contains(10) || path.contains(0) {
            throw RootfsError("the ext4 writer cannot normalise the entry \(String(decoding: path, as: UTF8.self).debugDescription): its name holds a newline, which debugfs cannot address",
                              hint: "rename it, write a tar/initrd (which keep such names), or write the image without SOURCE_DATE_EPOCH as root")
        }
        var out: [UInt8] = [34]
        for b in path {
            out.append(b)
            if b == 34 { out.append(34) }
        }
        out.append(34)
        return out
    }

    /// The debugfs commands, one per line, in the source's canonical order.
    /// `presentDevices` says whether the materialized directory holds device nodes (root extraction).
    public func script(for source: TreeSource, materializedDevices: Bool) throws -> [UInt8] {
        var out: [UInt8] = []
        func line(_ words: [UInt8]...) {
            out += words.joined(separator: [32])
            out.append(10)
        }
        try source.walk { item in
            let guestPath: [UInt8] = item.isRoot ? [47] : [47] + item.path
            let q = try Self.quote(guestPath)
            let isDevice = item.fileType == FileType.chr || item.fileType == FileType.blk
            // A hard link's later names share the first name's inode, already fixed.
            if item.hardLinkTo != nil { return }
            if ownership && isDevice && !materializedDevices {
                let parent = try Self.quote([47] + (parentPath(item.path) == [46] ? [] : parentPath(item.path)))
                let name = try Self.quote(Array(item.path.split(separator: 47).last ?? []))
                let major = (item.rdev >> 8) & 0xfff | ((item.rdev >> 32) & ~0xfff)
                let minor = (item.rdev & 0xff) | ((item.rdev >> 12) & ~0xff)
                line(Array("cd".utf8), parent)
                line(Array("mknod".utf8), name, Array((item.fileType == FileType.chr ? "c" : "b").utf8),
                     Array(String(major).utf8), Array(String(minor).utf8))
                line(Array("cd /".utf8))
            }
            let sif = Array("sif".utf8)
            if ownership {
                line(sif, q, Array("uid".utf8), Array(String(item.uid).utf8))
                line(sif, q, Array("gid".utf8), Array(String(item.gid).utf8))
                if item.fileType != FileType.lnk {
                    line(sif, q, Array("mode".utf8), Array(("0" + String(item.mode, radix: 8)).utf8))
                }
            }
            if let epoch {
                let mtime = min(item.mtime, epoch)
                for (field, value) in [("atime", epoch), ("ctime", epoch), ("crtime", epoch), ("mtime", mtime)] {
                    line(sif, q, Array(field.utf8), Array("@\(value)".utf8))
                    line(sif, q, Array((field + "_extra").utf8), Array("0".utf8))
                }
            }
        }
        return out
    }

    /// Applies the fixes to the ext4 file system at `offset` of `image`.
    public func apply(source: TreeSource, image: String, offset: Int64, materializedDevices: Bool, scratch: String) async throws {
        guard isNeeded else { return }
        let script = try self.script(for: source, materializedDevices: materializedDevices)
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
    }
}
