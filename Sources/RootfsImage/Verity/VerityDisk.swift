import RootfsSupport
import Glibc

/// A verity disk as Kata's runtime expects it (osbuilder's image_builder.sh with
/// MEASURED_ROOTFS=yes): partition 1 the file system, partition 2 its dm-verity hash
/// tree (no superblock), and next to the image `root_hash_<variant>.txt`.
public enum VerityDisk {
    /// The GPT partition types of the Discoverable Partitions Specification (root, root-verity)
    /// for an architecture as `uname -m` or Kata's ARCH names it; nil for one the spec
    /// table here does not hold (the image then keeps "Linux filesystem data").
    public static func discoverableTypes(architecture: String) -> (root: String, verity: String)? {
        switch architecture {
        case "x86_64", "amd64": return ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5")
        case "aarch64", "arm64": return ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "DF3300CE-D69F-4C92-978C-9BFB0F38D820")
        case "s390x": return ("5EEAD9A9-FE09-4A1E-A1D7-520D00531306", "B325BFBE-C7BE-4AB8-8357-139E652D2F6B")
        case "ppc64le": return ("C31C45E6-3F39-412E-80FB-4809C4980599", "906BD944-4589-4AAE-A4E4-DD983917446A")
        default: return nil
        }
    }

    /// Kata's file name: image_builder.sh writes `root_hash_${BUILD_VARIANT}.txt`, so no
    /// variant gives `root_hash_.txt` (kept as Kata spells it, so its tooling finds it).
    public static func rootHashFileName(variant: String?) -> String {
        "root_hash_\(variant ?? "").txt"
    }

    /// A `--variant` becomes part of a file name: plain name characters only.
    public static func validateVariant(_ variant: String, option: String) throws {
        let ok = !variant.isEmpty && variant.count <= 64 && variant != "." && variant != ".." && variant.utf8.allSatisfy {
            ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || [45, 46, 95].contains($0)
        }
        guard ok else {
            throw RootfsError("\(option) '\(variant)' cannot be part of the root-hash file name",
                              hint: "use letters, digits, '.', '_' and '-' (at most 64), e.g. --variant confidential")
        }
    }

    /// The salt of a verity disk: derived from SOURCE_DATE_EPOCH and the file system just
    /// written (its size and first 64 KiB, which hold its UUID, itself derived from the epoch),
    /// so two builds, as root or not, give the same root hash; else 32 random bytes as veritysetup does.
    public static func salt(epoch: Int?, data path: String, offset: Int64, length: Int64) throws -> [UInt8] {
        guard let epoch else { return (0..<32).map { _ in UInt8.random(in: 0 ... 255) } }
        return VerityHashTree.derivedSalt(epoch: epoch, identity: try VerityHashTree.dataIdentity(path: path, offset: offset, length: length))
    }

    /// The verity target line Kata's runtime passes in `dm-mod.create` (and the stage-1
    /// initrd loads with DM_TABLE_LOAD): `0 SECTORS verity 1 DATA HASH 4096 4096 BLOCKS 0 sha256 ROOT SALT`.
    public static func table(_ p: VerityParameters, dataDevice: String, hashDevice: String) throws -> String {
        let sectors = try Checked.multiply(p.dataBlocks, UInt64(p.dataBlockSize / 512), "the verity data size in sectors")
        return "0 \(sectors) verity 1 \(dataDevice) \(hashDevice) \(p.dataBlockSize) \(p.hashBlockSize) \(p.dataBlocks) 0 \(p.hashAlgorithm) \(p.rootHash) \(p.salt)"
    }

    /// `dm-mod.create="dm-verity,,,ro,TABLE"` as Kata's runtime writes it (kernel_verity_params),
    /// for kernels built with CONFIG_DM_INIT; the mapping is then /dev/dm-0.
    public static func dmModCreate(_ p: VerityParameters, dataDevice: String, hashDevice: String) throws -> String {
        "dm-mod.create=\"dm-verity,,,ro,\(try table(p, dataDevice: dataDevice, hashDevice: hashDevice))\""
    }

    /// Reads Kata's root-hash file: one line `root_hash=HEX,salt=HEX,data_blocks=N,data_block_size=4096,hash_block_size=4096`.
    public static func parseRootHashFile(_ text: String, what: String) throws -> VerityParameters {
        let line = text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).first.map(String.init) ?? ""
        var fields: [String: String] = [:]
        for part in line.split(separator: ",") {
            let kv = part.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { continue }
            fields[kv[0].trimmingCharacters(in: .whitespaces)] = kv[1].trimmingCharacters(in: .whitespaces)
        }
        let hint = "a root-hash file is the one line rootfs (or Kata's image_builder.sh) writes: root_hash=…,salt=…,data_blocks=…,data_block_size=4096,hash_block_size=4096"
        func field(_ name: String) throws -> String {
            guard let v = fields[name], !v.isEmpty else { throw RootfsError("\(what) has no \(name)=", hint: hint) }
            return v
        }
        let root = try field("root_hash").lowercased()
        guard root.utf8.count == 64, (try? VerityHashTree.parseSalt(root)) != nil else {
            throw RootfsError("\(what): root_hash '\(root)' is not 64 hex digits (a sha256)", hint: hint)
        }
        let saltText = try field("salt").lowercased()
        _ = try VerityHashTree.parseSalt(saltText)
        guard let blocks = UInt64(try field("data_blocks")), blocks > 0 else {
            throw RootfsError("\(what): data_blocks '\(fields["data_blocks"] ?? "")' is not a positive number", hint: hint)
        }
        for name in ["data_block_size", "hash_block_size"] where try field(name) != String(VerityHashTree.blockSize) {
            throw RootfsError("\(what): \(name)=\(fields[name] ?? "") is not \(VerityHashTree.blockSize), the only block size rootfs writes and checks",
                              hint: hint)
        }
        let hashSize = try VerityHashTree.hashSize(dataBlocks: blocks)
        return VerityParameters(rootHash: root, salt: saltText, dataBlocks: blocks, dataBlockSize: VerityHashTree.blockSize,
                                hashBlockSize: VerityHashTree.blockSize, hashAlgorithm: "sha256", hashOffset: 0, hashSize: hashSize)
    }

    /// Checks a root-hash file against the image before a guest is started: the data must fit
    /// partition 1, the tree partition 2, and sha256(salt ‖ the tree's top block) (the data
    /// block itself for a one-block file system) must be the root hash. A file from another
    /// build would otherwise hang or fail the guest far from its cause.
    public static func check(_ p: VerityParameters, image: String, data: (offset: Int64, size: Int64),
                             hash: (offset: Int64, size: Int64), rootHashFile: String) throws {
        let dataBytes = try Checked.multiply(p.dataBlocks, UInt64(p.dataBlockSize), "the verity data size of \(rootHashFile)")
        let hint = "use the root-hash file written with this image (--root-hash FILE), or rebuild the image"
        guard dataBytes <= UInt64(max(0, data.size)) else {
            throw RootfsError("\(rootHashFile) does not match \(image): it covers \(p.dataBlocks) blocks (\(dataBytes) bytes), partition 1 holds \(data.size) bytes",
                              hint: hint)
        }
        guard p.hashSize <= hash.size else {
            throw RootfsError("\(rootHashFile) does not match \(image): its tree needs \(p.hashSize) bytes, partition 2 holds \(hash.size)",
                              hint: hint)
        }
        let file = try OwnedFileDescriptor(path: image, flags: O_RDONLY)
        let top = try file.read(count: VerityHashTree.blockSize, at: p.hashSize == 0 ? data.offset : hash.offset)
        guard top.count == VerityHashTree.blockSize else {
            throw RootfsError("\(image) ends before its verity tree", hint: "the image is truncated")
        }
        var h = SHA256()
        h.update(try VerityHashTree.parseSalt(p.salt))
        h.update(top)
        let computed = SHA256.hex(h.finalize())
        guard computed == p.rootHash else {
            throw RootfsError("\(rootHashFile) does not match \(image): its root hash is \(p.rootHash), the image's tree gives \(computed) with that salt",
                              hint: hint)
        }
    }
}
