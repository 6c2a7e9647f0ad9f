import Foundation

/// An image opened for reading as a tree (`rootfs check`, `size`, `diff`, `ls`, `cp`): the tree
/// source and the scratch directory (a converted disk, an extracted file system) it may need,
/// removed by `close()`.
public final class OpenedImage: @unchecked Sendable {
    public let source: TreeSource
    /// What was found, for messages: "an ext4 file system in partition 1 of a qcow2 disk".
    public let what: String
    /// The path the user gave.
    public let name: String
    private var scratch: String?

    init(source: TreeSource, what: String, name: String, scratch: String?) {
        self.source = source
        self.what = what
        self.name = name
        self.scratch = scratch
    }

    deinit { close() }

    /// Whether the tree is an ext4 file system read in place (which holds a /lost+found of its own).
    public var isExt4: Bool { if case .ext4 = source { return true } else { return false } }

    /// Removes what opening made (idempotent).
    public func close() {
        if let scratch { FS.remove(scratch) }
    }

    /// The tree as a host directory: itself for a directory (or a file system a tool extracted),
    /// else extracted into the scratch directory (GuestTree's checks read a host tree).
    public func directory() throws -> String {
        if case .directory(let d) = source { return d }
        if scratch == nil {
            // An image transport (oci:) is opened with no scratch directory: one is made now.
            let base = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/tmp"
            scratch = try FS.makeSiblingTemporaryDirectory(for: base + "/rootfs-inspect")
        }
        let scratch = scratch!
        let tree = scratch + "/tree-extracted"
        if FS.isDirectory(tree) { return tree }
        var extractor = TreeExtractor(destination: tree)
        // An ordinary user cannot create device nodes: placeholders keep their names.
        extractor.devicePlaceholders = true
        try extractor.extract(source)
        return tree
    }
}

/// Opens anything rootfs writes as a TreeSource: directories, tars and cpio initrds (any
/// compression, libarchive in process), ISO 9660 images (libarchive), ext4 (in process,
/// bare or in any partition of an MBR/GPT disk), erofs (`fsck.erofs --extract`) and squashfs
/// (`unsquashfs`), bare or in a partition, and qcow2/VHD/VHDX/VMDK disks (converted to a raw
/// scratch file by `qemu-img convert`, backing files refused), plus the `oci:` and
/// `docker-archive:` image transports. Tools get only paths rootfs made; guest names never
/// reach a tool.
public enum ImageOpener {
    /// The file systems found at an offset.
    enum Filesystem: String { case ext4, erofs, squashfs, xfs, vfat }

    /// The virtual disk containers qemu-img converts (its driver names).
    enum Container: String {
        case qcow2, vpc, vhdx, vmdk
        var shown: String { self == .vpc ? "VHD" : self == .vhdx ? "VHDX" : self == .vmdk ? "VMDK" : "qcow2" }
    }

    public static func open(_ path: String, option: String = "IMAGE",
                            runner: ProcessRunner = ProcessRunner()) async throws -> OpenedImage {
        if let image = try ImageReference.parse(path, option: option) {
            return OpenedImage(source: .image(image), what: image.description, name: path, scratch: nil)
        }
        let absolute = FS.absolute(path)
        if FS.isDirectory(absolute) {
            return OpenedImage(source: .directory(absolute), what: "directory", name: path, scratch: nil)
        }
        guard FS.isRegularFile(absolute) else {
            throw RootfsError("\(option) \(path) does not exist or is neither a directory nor a file",
                              hint: "give a rootfs directory, a tar or initrd, a disk image (raw, qcow2, vhd, vhdx, vmdk), an erofs, squashfs or ISO image, or an image: \(ImageReference.transportList)")
        }
        // Under TMPDIR, else /var/tmp: a converted disk or an extracted tree can outgrow a tmpfs /tmp.
        let base = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/tmp"
        let scratch = try FS.makeSiblingTemporaryDirectory(for: base + "/rootfs-inspect")
        do {
            var raw = absolute
            var prefix = ""
            if let container = try containerFormat(absolute) {
                raw = scratch + "/disk.raw"
                try await convert(absolute, container: container, to: raw, runner: runner)
                prefix = " of a \(container.shown) disk"
            }
            let (source, what) = try await openRaw(raw, name: path, suffix: prefix, scratch: scratch, runner: runner)
            return OpenedImage(source: source, what: what, name: path, scratch: scratch)
        } catch {
            FS.remove(scratch)
            throw error
        }
    }

    /// qcow2 ("QFI\xfb"), VMDK ("KDMV"), VHDX ("vhdxfile") at the start; VHD's "conectix" footer at
    /// the end (a fixed VHD) or its copy at the start (dynamic). A VMDK descriptor file names other
    /// files and is refused.
    static func containerFormat(_ path: String) throws -> Container? {
        let file = try OwnedFileDescriptor(path: path, flags: O_RDONLY)
        let head = try file.read(count: 512, at: 0)
        func starts(_ text: String) -> Bool { head.starts(with: Array(text.utf8)) }
        if head.starts(with: Array("QFI".utf8) + [0xfb]) {
            // A backing file would be read from the host (qemu-img follows it): refused.
            let header = BinaryDecoder(head, order: .big, what: "the qcow2 header of \(path)")
            if head.count >= 16, try header.u64(8) != 0 {
                throw RootfsError("\(path) is a qcow2 disk with a backing file",
                                  hint: "rootfs reads self-contained disks only: qemu-img convert -O qcow2 \(shellQuote(path)) flat.qcow2, then give flat.qcow2")
            }
            return .qcow2
        }
        if starts("KDMV") { return .vmdk }
        if starts("vhdxfile") { return .vhdx }
        if starts("conectix") { return .vpc }
        if starts("# Disk DescriptorFile") {
            throw RootfsError("\(path) is a VMDK descriptor, whose data lies in other files",
                              hint: "give a monolithic VMDK (qemu-img convert -O vmdk, as rootfs writes)")
        }
        let size = try file.size()
        if size >= 512, try file.read(count: 8, at: size - 512) == Array("conectix".utf8) { return .vpc }
        return nil
    }

    /// `qemu-img convert` to a sparse raw scratch file. The source is named by a JSON
    /// description with `backing: null`, so no backing file or parent a header names is opened.
    static func convert(_ path: String, container: Container, to raw: String, runner: ProcessRunner) async throws {
        guard ProcessRunner.which("qemu-img") != nil else {
            throw RootfsError("qemu-img is not installed; it reads \(container.shown) disks", hint: "apt-get install qemu-utils")
        }
        struct FileNode: Encodable { var driver = "file"; var filename: String }
        struct Node: Encodable {
            var driver: String
            var file: FileNode
            var backing: String?
            func encode(to encoder: any Encoder) throws {
                var c = encoder.container(keyedBy: Keys.self)
                try c.encode(driver, forKey: .driver)
                try c.encode(file, forKey: .file)
                try c.encodeNil(forKey: .backing)
            }
            enum Keys: String, CodingKey { case driver, file, backing }
        }
        let json = try JSONEncoder().encode(Node(driver: container.rawValue, file: FileNode(filename: path)))
        let description = String(decoding: json, as: UTF8.self)
        if container == .vhdx {
            let file = try OwnedFileDescriptor(path: path, flags: O_RDONLY)
            if try VHDXProbe.hasParent(what: path, read: { offset, count in (try? file.read(count: count, at: Int64(offset))) ?? [] }) {
                throw RootfsError("\(path) is a differencing VHDX (it has a parent disk)", hint: "give a self-contained disk")
            }
        }
        do {
            try await runner.capture(ToolCommand("qemu-img", ["convert", "-O", "raw", "json:" + description, raw]))
        } catch let failure as ToolFailure {
            throw RootfsError("\(path) looks like a \(container.shown) disk but qemu-img cannot read it (\(failure.status))",
                              hint: "the image is truncated or corrupt: `qemu-img check \(shellQuote(path))` says more",
                              details: failure.outputTail)
        }
    }

    /// The file system whose superblock is at `offset`.
    static func filesystem(at offset: Int64, read: (Int64, Int) throws -> [UInt8]) throws -> Filesystem? {
        let block = try read(offset, 4096)
        guard block.count >= 1024 + 64 else { return nil }
        if block[1024 + 56] == 0x53 && block[1024 + 57] == 0xef { return .ext4 }
        if Array(block[1024..<1028]) == [0xe2, 0xe1, 0xf5, 0xe0] { return .erofs }
        if block.starts(with: Array("hsqs".utf8)) { return .squashfs }
        if block.starts(with: Array("XFSB".utf8)) { return .xfs }
        if Array(block[82..<87]) == Array("FAT32".utf8) || Array(block[54..<59]) == Array("FAT1".utf8) { return .vfat }
        return nil
    }

    static func openRaw(_ raw: String, name: String, suffix: String, scratch: String,
                        runner: ProcessRunner) async throws -> (TreeSource, String) {
        let file = try OwnedFileDescriptor(path: raw, flags: O_RDONLY)
        let size = try file.size()
        func read(_ offset: Int64, _ count: Int) throws -> [UInt8] { try file.read(count: count, at: offset) }
        // ISO 9660 first: a hybrid ISO also carries an MBR. libarchive reads it in process.
        if size > 32769 + 5, try read(32769, 5) == Array("CD001".utf8) {
            return (.archive(raw), "ISO 9660 image" + suffix)
        }
        if let fs = try filesystem(at: 0, read: read) {
            return try await filesystemSource(fs, raw: raw, offset: 0, length: size, name: name,
                                              what: "\(fs.rawValue) file system" + suffix, scratch: scratch, runner: runner)
        }
        let partitions = try PartitionProbe.partitions(what: name, size: size, limit: 8, read: read)
        if !partitions.isEmpty {
            var seen: [String] = []
            for (n, p) in partitions.enumerated() {
                let fs = try filesystem(at: p.offset, read: read)
                seen.append("partition \(n + 1): \(fs?.rawValue ?? "no known file system")")
                guard let fs, fs != .vfat, fs != .xfs else { continue }
                return try await filesystemSource(fs, raw: raw, offset: p.offset, length: p.size, name: name,
                                                  what: "\(fs.rawValue) file system in partition \(n + 1)" + (suffix.isEmpty ? " of a raw disk" : suffix),
                                                  scratch: scratch, runner: runner)
            }
            throw RootfsError("\(name) is a partitioned disk with no ext4, erofs or squashfs file system (\(seen.joined(separator: ", ")))",
                              hint: seen.contains { $0.hasSuffix("xfs") }
                                ? "rootfs reads xfs through no tool: mount the partition read-only and give the directory"
                                : "the disk is corrupt, or not one rootfs wrote")
        }
        // Anything else must be an archive libarchive reads: its first header is read here, so a
        // file that is none is one clear error, not a failure in the middle of a walk.
        do {
            let reader = try ArchiveReader(path: raw)
            _ = try reader.next()
        } catch {
            throw RootfsError("\(name) is not an image rootfs can read: no file system, partition table or archive found (\(error))",
                              hint: "give a rootfs directory, a tar or initrd (plain or compressed), a disk (raw, qcow2, vhd, vhdx, vmdk) with ext4 or erofs, an erofs, squashfs or ISO image; if rootfs wrote it, it is truncated or corrupt")
        }
        if !suffix.isEmpty {
            throw RootfsError("\(name)\(suffix.replacingOccurrences(of: " of a", with: " is a")) holding no partition table or file system",
                              hint: "the disk is corrupt, or not one rootfs wrote")
        }
        return (.archive(raw), "archive")
    }

    /// ext4 is read in process where it lies; erofs and squashfs are extracted by their own tool
    /// from a scratch copy of the file system (the tools take no offset).
    static func filesystemSource(_ fs: Filesystem, raw: String, offset: Int64, length: Int64, name: String,
                                 what: String, scratch: String, runner: ProcessRunner) async throws -> (TreeSource, String) {
        switch fs {
        case .ext4:
            return (.ext4(path: raw, offset: offset), what)
        case .xfs, .vfat:
            throw RootfsError("\(name) holds an \(fs.rawValue) file system, which rootfs does not read",
                              hint: "mount it read-only (mount -o loop,ro) and give the directory")
        case .erofs, .squashfs:
            let image: String
            if offset == 0 { image = raw } else {
                image = scratch + "/filesystem." + fs.rawValue
                try copyRange(from: raw, offset: offset, length: length, to: image)
            }
            let tree = scratch + "/tree"
            let command: ToolCommand
            if fs == .erofs {
                guard ProcessRunner.which("fsck.erofs") != nil else {
                    throw RootfsError("fsck.erofs is not installed; it extracts erofs images", hint: "apt-get install erofs-utils")
                }
                try FS.makeDirectories(tree)
                command = ToolCommand("fsck.erofs", ["--extract=" + tree, image])
            } else {
                guard ProcessRunner.which("unsquashfs") != nil else {
                    throw RootfsError("unsquashfs is not installed; it extracts squashfs images", hint: "apt-get install squashfs-tools")
                }
                // -d names a directory unsquashfs creates; xattrs are not part of a TreeItem.
                command = ToolCommand("unsquashfs", ["-no-progress", "-no-xattrs", "-d", tree, image])
            }
            do {
                try await runner.capture(command)
            } catch let failure as ToolFailure {
                throw RootfsError("\(name): \(command.toolName) cannot read the \(what) (\(failure.status))",
                                  hint: "the image is truncated or corrupt", details: failure.outputTail)
            }
            return (.directory(tree), what)
        }
    }

    /// Copies `length` bytes at `offset` into a new file, leaving all-zero chunks as holes.
    static func copyRange(from path: String, offset: Int64, length: Int64, to target: String) throws {
        let input = try OwnedFileDescriptor(path: path, flags: O_RDONLY)
        let output = try OwnedFileDescriptor(path: target, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        let chunk = 1 << 20
        var done: Int64 = 0
        while done < length {
            try Task.checkCancellation()
            let want = Int(min(Int64(chunk), length - done))
            let bytes = try input.read(count: want, at: try Checked.add(offset, done, "an offset in \(path)"))
            if bytes.isEmpty { break }
            if bytes.contains(where: { $0 != 0 }) { try output.writeAll(bytes, at: done) }
            done += Int64(bytes.count)
        }
        guard ftruncate(output.raw, off_t(done)) == 0 else { throw RootfsError("cannot size \(target): \(FS.errnoText())") }
    }
}
