import RootfsSupport
import Foundation

/// KubeVirt's containerDisk: a VM disk shipped as a container image, the disk file
/// under `/disk/` in a single layer (disk.img for raw, disk.qcow2 for qcow2), owned
/// by 107:107 (the qemu user of KubeVirt's launcher) and readable only by it, as
/// KubeVirt's documentation builds them (`ADD --chown=107:107 disk.qcow2 /disk/`).
public struct ContainerDiskWriter: Sendable {
    public var layout: OCIImageWriter.Layout
    public var epoch: Int?
    public var architecture: String
    public var version: String?
    public var revision: String?
    public var reference: String

    public init(layout: OCIImageWriter.Layout = .oci, epoch: Int? = nil, architecture: String = OCIArchitecture.host,
                version: String? = nil, revision: String? = nil, reference: String = "rootfs-containerdisk:latest") {
        self.layout = layout
        self.epoch = epoch
        self.architecture = architecture
        self.version = version
        self.revision = revision
        self.reference = reference
    }

    static let qemuUser: UInt32 = 107

    /// Writes the image holding `disk` (a raw or qcow2 file) to `output`.
    @discardableResult
    public func write(disk: String, to output: String) throws -> OCIImageWriter.Result {
        guard FS.isRegularFile(disk) else {
            throw RootfsError("the containerdisk's disk \(disk) is not a file", hint: "write the disk first (rootfs image TREE -o disk.qcow2)")
        }
        let name = try Self.isQcow2(disk) ? "disk.qcow2" : "disk.img"
        let work = try FS.makeSiblingTemporaryDirectory(for: output)
        defer { FS.remove(work) }
        try FS.makeDirectories(work + "/root/disk")
        // A hard link when the disk is on this file system, else a copy: the layer reads it either way.
        if link(disk, work + "/root/disk/" + name) != 0 {
            try FileManager.default.copyItem(atPath: disk, toPath: work + "/root/disk/" + name)
        }
        var writer = OCIImageWriter(layout: layout, compression: .gzip, epoch: epoch, architecture: architecture,
                                    version: version, revision: revision, reference: reference)
        let owner = Self.qemuUser
        writer.transform = { item in
            if item.isRoot {
                item.uid = 0; item.gid = 0; item.mode = FileType.dir | 0o755
            } else if item.fileType == FileType.reg {
                item.uid = owner; item.gid = owner; item.mode = FileType.reg | 0o440
                item.nlink = 1
            } else {
                item.uid = owner; item.gid = owner; item.mode = FileType.dir | 0o755
            }
            if item.mtime > (epoch ?? Int.max) { item.mtime = epoch! }
        }
        return try writer.write(source: .directory(work + "/root"), to: output)
    }

    static func isQcow2(_ path: String) throws -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw RootfsError("cannot read \(path): \(FS.errnoText())") }
        defer { close(fd) }
        var magic = [UInt8](repeating: 0, count: 4)
        let n = magic.withUnsafeMutableBytes { read(fd, $0.baseAddress, 4) }
        return n == 4 && magic == [0x51, 0x46, 0x49, 0xfb]
    }
}
