import Foundation
import RootfsImage

/// `rootfs boot` of a `--verity` disk: the root is the dm-verity mapping of partition 1
/// checked against partition 2, set up from Kata's root-hash file as Kata's runtime does
/// (`dm-mod.create=...` for kernels with CONFIG_DM_INIT; the stage-1 initrd's
/// `rootfs-agent dm-create` from the same parameter for kernels with dm as modules).
public struct VerityBoot: Sendable, Equatable {
    public var parameters: VerityParameters
    /// The root-hash file the parameters came from (for messages).
    public var rootHashFile: String

    public init(parameters: VerityParameters, rootHashFile: String) {
        self.parameters = parameters
        self.rootHashFile = rootHashFile
    }

    /// The modules the mapping needs on a kernel that has them as modules (Debian's cloud kernel);
    /// their dependencies (dm-bufio, ...) come from modinfo.
    public static let modules = ["dm_mod", "dm_verity"]

    /// The data and hash partitions as the guest names them: NVMe by default, virtio-blk with --kata.
    public static func devices(kata: Bool) -> (data: String, hash: String) {
        kata ? ("/dev/vda1", "/dev/vda2") : ("/dev/nvme0n1p1", "/dev/nvme0n1p2")
    }

    /// The kernel parameters: Kata's dm-mod.create and the root on /dev/dm-0, read-only.
    public func kernelParameters(kata: Bool) throws -> [String] {
        let d = Self.devices(kata: kata)
        return [try VerityDisk.dmModCreate(parameters, dataDevice: d.data, hashDevice: d.hash), "root=/dev/dm-0"]
    }

    /// Finds and checks the root-hash file of a raw disk image: `--root-hash FILE`, else the
    /// `root_hash_*.txt` next to the image that matches it. Nil when the image is not a verity
    /// disk (one partition, or no root-hash file beside it and none given).
    public static func resolve(image: String, rootHashFile: String?) throws -> VerityBoot? {
        guard let file = ImageFile(path: image) else {
            if rootHashFile != nil { throw RootfsError("cannot read the image \(image)") }
            return nil
        }
        defer { file.close() }
        let head = file.read(at: 0, count: 8)
        let isContainer = [Array("QFI\u{fb}".utf8), Array("KDMV".utf8), Array("conectix".utf8)].contains { Array(head.prefix($0.count)) == $0 }
        if isContainer {
            guard rootHashFile == nil else {
                throw RootfsError("--root-hash: rootfs boot checks and maps a verity disk in a raw image only; \(image) is a \(head.starts(with: Array("QFI".utf8)) ? "qcow2" : "VHD/vmdk") container",
                                  hint: "qemu-img convert -O raw \(image) disk.img, then rootfs boot disk.img --root-hash FILE")
            }
            return nil
        }
        let size = Int64(file.size)
        let partitions: [(offset: Int64, size: Int64)]
        do {
            partitions = try PartitionProbe.partitions(what: image, size: size) { offset, count in
                guard let o = Int(exactly: offset) else { return [] }
                return file.read(at: o, count: count)
            }
        } catch {
            // Not asked for verity: a table that cannot be read is for the image detection to report.
            if rootHashFile == nil { return nil }
            throw error
        }
        let candidates: [String]
        if let rootHashFile {
            candidates = [rootHashFile]
        } else {
            guard partitions.count >= 2 else { return nil }
            let dir = FS.parent(FS.absolute(image))
            candidates = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [])
                .filter { $0.hasPrefix("root_hash_") && $0.hasSuffix(".txt") }.sorted().map { dir + "/" + $0 }
            if candidates.isEmpty { return nil }
        }
        guard partitions.count >= 2 else {
            throw RootfsError("\(image) is not a verity disk: it has \(partitions.count) partition(s), a verity disk has the file system in 1 and its hash tree in 2",
                              hint: "build it with --verity, or drop --root-hash")
        }
        var mismatches: [String] = []
        for candidate in candidates {
            guard FS.isRegularFile(candidate), let text = try? String(contentsOfFile: candidate, encoding: .utf8), text.utf8.count < 4096 else {
                throw RootfsError("cannot read the root-hash file \(candidate)", hint: "give the root_hash_<variant>.txt written next to the image")
            }
            let parameters = try VerityDisk.parseRootHashFile(text, what: candidate)
            do {
                try VerityDisk.check(parameters, image: image, data: partitions[0], hash: partitions[1], rootHashFile: candidate)
                return VerityBoot(parameters: parameters, rootHashFile: candidate)
            } catch let error as RootfsError {
                if rootHashFile != nil { throw error }
                mismatches.append(error.message)
            }
        }
        throw RootfsError("no root-hash file next to \(image) matches it", hint: "give the right one with --root-hash FILE, or rebuild the image with --verity",
                          details: mismatches)
    }

    /// Whether the console shows dm-verity refusing a block (the kernel's "data block N is corrupted").
    public static func corruption(in lines: [String]) -> String? {
        lines.first { $0.contains("verity") && ($0.contains("corrupted") || $0.contains("metadata block")) }
    }
}
