import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// `--verity` disks checked by independent tools: sfdisk reads the partition table,
/// veritysetup verifies the tree with the root-hash file's values and recomputes it.
@Suite(.requires(.veritysetup), .tags(.veritysetup)) struct VerityDiskTests {
    static let epoch = ["SOURCE_DATE_EPOCH": "1700000000"]

    /// A small extension tree (no init, no agent: --no-agent-check) with files over several blocks.
    static func tree(in dir: String) throws -> String {
        let root = dir + "/tree"
        try FS.makeDirectories(root + "/usr/share/ext")
        var gen = TestBytes(seed: 15)
        for i in 0..<20 { try writeFile(root + "/usr/share/ext/file\(i)", gen.bytes(10_000 + i * 3000)) }
        try writeFile(root + "/usr/share/ext/hello", Array("hello verity\n".utf8))
        return root
    }

    struct Partition { var start: Int64; var size: Int64; var type: String }

    /// The partitions as sfdisk (util-linux) reads them: not our own reader.
    static func partitions(_ image: String) async throws -> [Partition] {
        let out = try await Fixtures.run(try #require(ProcessRunner.which("sfdisk")), ["-J", image])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [String: Any])
        let table = try #require(json["partitiontable"] as? [String: Any])
        let parts = try #require(table["partitions"] as? [[String: Any]])
        return parts.map { p in
            Partition(start: Int64((p["start"] as? Int) ?? 0) * 512, size: Int64((p["size"] as? Int) ?? 0) * 512,
                      type: "\(p["type"] ?? "")".uppercased())
        }
    }

    /// Kata's root-hash line, field by field.
    static func rootHashFields(_ path: String) throws -> [String: String] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.hasSuffix("\n") && text.split(separator: "\n").count == 1, "one line: \(text)")
        let line = text.trimmingCharacters(in: .newlines)
        let names = line.split(separator: ",").map { $0.split(separator: "=", maxSplits: 1).first.map(String.init) ?? "" }
        #expect(names == ["root_hash", "salt", "data_blocks", "data_block_size", "hash_block_size"], "Kata's field order: \(line)")
        return Dictionary(uniqueKeysWithValues: line.split(separator: ",").map { kv in
            let p = kv.split(separator: "=", maxSplits: 1).map(String.init)
            return (p[0], p.count > 1 ? p[1] : "")
        })
    }

    static func extract(_ image: String, _ p: Partition, to path: String) throws {
        let input = try OwnedFileDescriptor(path: image, flags: O_RDONLY)
        try writeFile(path, try input.read(count: Int(p.size), at: p.start))
    }

    static func veritysetup(_ args: [String]) async throws -> Fixtures.CLIResult {
        try await Fixtures.run(try #require(ProcessRunner.which("veritysetup")), args)
    }

    @Test(arguments: [["--fs", "ext4"], ["--fs", "erofs"], ["--fs", "ext4", "--partition-table", "gpt"]])
    func verityDiskVerifiesAndMatchesVeritysetup(_ flags: [String]) async throws {
        let dir = try Fixtures.temporaryDirectory("verity-disk"); defer { FS.remove(dir) }
        let tree = try Self.tree(in: dir)
        try FS.makeDirectories(dir + "/out")
        let image = dir + "/out/ext.img"
        let r = try await Fixtures.rootfs(["image", tree, "--no-agent-check", "--verity", "--variant", "test", "-o", image] + flags,
                                          environment: Self.epoch)
        try #require(r.status == 0, "\(r.stderr)")
        let fields = try Self.rootHashFields(dir + "/out/root_hash_test.txt")
        #expect(r.stdout.contains(fields["root_hash"] ?? "?"), "the root hash is printed: \(r.stdout)")
        #expect(fields["data_block_size"] == "4096" && fields["hash_block_size"] == "4096")

        let parts = try await Self.partitions(image)
        try #require(parts.count == 2, "two partitions: \(parts)")
        if flags.contains("gpt") {
            #expect(parts[0].type == "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "x86-64 root: \(parts[0].type)")
            #expect(parts[1].type == "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5", "x86-64 root-verity: \(parts[1].type)")
            #expect(try await Fixtures.run(try #require(ProcessRunner.which("sgdisk")), ["-v", image]).stdout.contains("No problems found"))
        }
        let blocks = try #require(UInt64(fields["data_blocks"] ?? ""))
        #expect(Int64(blocks) * 4096 == parts[0].size, "the tree covers all of partition 1")
        try Self.extract(image, parts[0], to: dir + "/p1")
        try Self.extract(image, parts[1], to: dir + "/p2")
        let salt = "--salt=" + (fields["salt"] ?? "")
        let root = fields["root_hash"] ?? ""

        // veritysetup verifies partition 1 against partition 2 with the file's values...
        let verify = try await Self.veritysetup(["verify", "--no-superblock", salt, dir + "/p1", dir + "/p2", root])
        #expect(verify.status == 0, "\(verify.stderr)")
        // ...and, by offset into the image itself, the tree partition with --hash-offset.
        let byOffset = try await Self.veritysetup(["verify", "--no-superblock", salt, "--hash-offset=\(parts[1].start)", dir + "/p1", image, root])
        #expect(byOffset.status == 0, "\(byOffset.stderr)")
        // veritysetup format of the same partition with the same salt: the same root hash and tree bytes.
        let format = try await Self.veritysetup(["format", "--no-superblock", salt, dir + "/p1", dir + "/theirs"])
        #expect(format.status == 0, "\(format.stderr)")
        #expect(format.stdout.contains("Root hash:      \t\(root)") || format.stdout.split(separator: "\n").contains { $0.hasPrefix("Root hash:") && $0.hasSuffix(root) },
                "\(format.stdout)")
        let theirs = try fileBytes(dir + "/theirs")
        #expect(Array(try fileBytes(dir + "/p2").prefix(theirs.count)) == theirs)

        // One byte of partition 1 flipped: veritysetup refuses it.
        var data = try fileBytes(dir + "/p1")
        data[data.count / 2] ^= 0x40
        try writeFile(dir + "/p1", data)
        let flipped = try await Self.veritysetup(["verify", "--no-superblock", salt, dir + "/p1", dir + "/p2", root])
        #expect(flipped.status != 0, "a flipped byte must fail: \(flipped.stdout)")
    }

    @Test func sourceDateEpochGivesTheSameRootHashAndNoEpochARandomSalt() async throws {
        let dir = try Fixtures.temporaryDirectory("verity-repro"); defer { FS.remove(dir) }
        let tree = try Self.tree(in: dir)
        var hashes: [String] = []
        for (n, env) in [Self.epoch, Self.epoch, [:]].enumerated() {
            try FS.makeDirectories(dir + "/\(n)")
            let r = try await Fixtures.rootfs(["image", tree, "--no-agent-check", "--verity", "-o", dir + "/\(n)/e.img", "--fs", "erofs"],
                                              environment: env)
            try #require(r.status == 0, "\(r.stderr)")
            // No --variant and no BUILD_VARIANT: Kata's own name, root_hash_.txt.
            hashes.append(try Self.rootHashFields(dir + "/\(n)/root_hash_.txt")["root_hash"] ?? "")
        }
        #expect(hashes[0] == hashes[1], "two SOURCE_DATE_EPOCH builds: \(hashes)")
        #expect(try SHA256.hexDigest(ofFile: dir + "/0/e.img") == SHA256.hexDigest(ofFile: dir + "/1/e.img"))
        #expect(hashes[2] != hashes[0], "without SOURCE_DATE_EPOCH the salt is random")
        // BUILD_VARIANT names the file as Kata's image_builder.sh does.
        try FS.makeDirectories(dir + "/v")
        let v = try await Fixtures.rootfs(["image", tree, "--no-agent-check", "--verity", "-o", dir + "/v/e.img"],
                                          environment: Self.epoch.merging(["BUILD_VARIANT": "confidential"]) { $1 })
        #expect(v.status == 0 && FS.isRegularFile(dir + "/v/root_hash_confidential.txt"), "\(v.stderr)")
    }

    @Test func verityIsRefusedWhereItCannotApply() async throws {
        let dir = try Fixtures.temporaryDirectory("verity-refused"); defer { FS.remove(dir) }
        let tree = try Self.tree(in: dir)
        for (output, words) in [("x.tar", "archive of files"), ("x.initrd", "initrd"), ("x.vhd", "raw disk"), ("x.erofs", "raw disk")] {
            let r = try await Fixtures.rootfs(["image", tree, "--no-agent-check", "--verity", "-o", dir + "/" + output])
            #expect(r.status != 0 && r.stderr.contains("--verity cannot apply") && r.stderr.contains(words), "\(output): \(r.stderr)")
            #expect(!FS.exists(dir + "/" + output) && !FS.exists(dir + "/root_hash_.txt"), "nothing is written for \(output)")
        }
        let bare = try await Fixtures.rootfs(["image", tree, "--no-agent-check", "--verity", "--no-partition-table", "-o", dir + "/b.img"])
        #expect(bare.status != 0 && bare.stderr.contains("needs a partition table"), "\(bare.stderr)")
        let variant = try await Fixtures.rootfs(["image", tree, "--no-agent-check", "--verity", "--variant", "../x", "-o", dir + "/b.img"])
        #expect(variant.status != 0 && variant.stderr.contains("--variant"), "\(variant.stderr)")
        #expect(!FS.exists(dir + "/b.img"))
        // qcow2 is the raw disk converted: allowed, with its root-hash file.
        let qcow2 = try await Fixtures.rootfs(["image", tree, "--no-agent-check", "--verity", "-o", dir + "/q.qcow2"], environment: Self.epoch)
        #expect(qcow2.status == 0 && FS.isRegularFile(dir + "/root_hash_.txt"), "\(qcow2.stderr)")
        // Without --no-agent-check a tree with no init is refused, as before.
        let checked = try await Fixtures.rootfs(["image", tree, "--verity", "-o", dir + "/c.img"])
        #expect(checked.status != 0, "\(checked.stderr)")
    }

    @Test func rootHashFileIsCheckedAgainstTheImage() async throws {
        let dir = try Fixtures.temporaryDirectory("verity-check"); defer { FS.remove(dir) }
        let tree = try Self.tree(in: dir)
        let image = dir + "/e.img"
        let r = try await Fixtures.rootfs(["image", tree, "--no-agent-check", "--verity", "-o", image], environment: Self.epoch)
        try #require(r.status == 0, "\(r.stderr)")
        let good = try VerityDisk.parseRootHashFile(try String(contentsOfFile: dir + "/root_hash_.txt", encoding: .utf8), what: "f")
        #expect(try VerityBoot.resolve(image: image, rootHashFile: nil)?.parameters == good)
        // Another salt: the file no longer matches the image's tree.
        var bad = good
        bad.salt = String(repeating: "ab", count: 32)
        try writeFile(dir + "/other.txt", Array((bad.kataParameters + "\n").utf8))
        #expect(throws: RootfsError.self) { try VerityBoot.resolve(image: image, rootHashFile: dir + "/other.txt") }
        let boot = try await Fixtures.rootfs(["boot", image, "--kernel", "/nonexistent", "--root-hash", dir + "/other.txt", "--", "true"])
        #expect(boot.status != 0 && boot.stderr.contains("does not match") && boot.stderr.contains("other.txt"), "\(boot.stderr)")
    }
}

/// Root and rootless writes of the same tar give the same verity disk and root hash.
@Suite(.requires(.root, .veritysetup), .tags(.root, .veritysetup)) struct VerityRootlessTests {
    @Test func rootAndRootlessGiveTheSameRootHash() async throws {
        try await RootlessUser.ensure()
        let dir = try Fixtures.temporaryDirectory("verity-rootless"); defer { FS.remove(dir) }
        let tree = try VerityDiskTests.tree(in: dir)
        // Owners that only a tar carries to an ordinary user.
        chown(tree + "/usr/share/ext/hello", 0, 42)
        chown(tree + "/usr/share/ext/file1", 1000, 1000)
        let staged = try await RootlessUser.stage(in: dir)
        let tar = dir + "/ext.tar"
        let t = try await Fixtures.rootfs(["image", tree, "--no-agent-check", "-o", tar], environment: VerityDiskTests.epoch)
        try #require(t.status == 0, "\(t.stderr)")
        try await ProcessRunner().capture(ToolCommand("chmod", ["a+r", tar]))
        let args = ["image", tar, "--no-agent-check", "--verity", "--fs", "ext4"]
        let user = try await RootlessUser.run([staged.binary] + args + ["-o", staged.run + "/e.img"], in: staged.run, environment: VerityDiskTests.epoch)
        #expect(user.status == 0, "\(user.stderr)")
        try FS.makeDirectories(dir + "/root")
        let root = try await Fixtures.rootfs(args + ["-o", dir + "/root/e.img"], environment: VerityDiskTests.epoch)
        #expect(root.status == 0, "\(root.stderr)")
        let a = try VerityDiskTests.rootHashFields(staged.run + "/root_hash_.txt"), b = try VerityDiskTests.rootHashFields(dir + "/root/root_hash_.txt")
        #expect(a["root_hash"] == b["root_hash"] && a["root_hash"]?.count == 64, "rootless \(a) vs root \(b)")
        #expect(try SHA256.hexDigest(ofFile: staged.run + "/e.img") == SHA256.hexDigest(ofFile: dir + "/root/e.img"))
    }
}

/// `rootfs build --verity` on the busybox test distro: the root hash in `--json`, the manifest and the
/// root-hash file agree with the disk (veritysetup), ROOTFS_ONLY extension images, and the refusals.
@Suite(.requires(.busybox, .root, .veritysetup), .tags(.busybox, .root, .veritysetup)) struct VerityBuildTestsRequiringBusybox {
    @Test func buildWritesTheRootHashEverywhere() async throws {
        let distros = try busyboxDistros()
        let dir = try Fixtures.temporaryDirectory("verity-build")
        defer { FS.remove(distros); FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--image", dir + "/bb.img", "--verity", "--json"],
                                          environment: VerityDiskTests.epoch.merging(["BUILD_VARIANT": "measured"]) { $1 }, workingDirectory: dir)
        try #require(r.status == 0, "\(r.stderr)")
        let fields = try VerityDiskTests.rootHashFields(dir + "/root_hash_measured.txt")
        let doc = try jsonObject(r.stdout)
        let outputs = try #require(doc["outputs"] as? [[String: Any]])
        let image = try #require(outputs.first { ($0["kind"] as? String) == "image" })
        let verity = try #require(image["verity"] as? [String: Any], "\(image)")
        #expect(verity["rootHash"] as? String == fields["root_hash"] && verity["salt"] as? String == fields["salt"])
        #expect(image["rootHashFile"] as? String == dir + "/root_hash_measured.txt")
        let manifest = try jsonObject(try String(contentsOfFile: dir + "/bb.manifest.json", encoding: .utf8))
        let listed = try #require((manifest["outputs"] as? [[String: Any]])?.first { ($0["kind"] as? String) == "image" })
        #expect((listed["verity"] as? [String: Any])?["rootHash"] as? String == fields["root_hash"], "\(listed)")
        let parts = try await VerityDiskTests.partitions(dir + "/bb.img")
        try #require(parts.count == 2)
        try VerityDiskTests.extract(dir + "/bb.img", parts[0], to: dir + "/p1")
        let verify = try await VerityDiskTests.veritysetup(["verify", "--no-superblock", "--salt=" + (fields["salt"] ?? ""),
                                                           "--hash-offset=\(parts[1].start)", dir + "/p1", dir + "/bb.img", fields["root_hash"] ?? ""])
        #expect(verify.status == 0, "\(verify.stderr)")

        // ROOTFS_ONLY: the distro tree alone (no init, no agent) as an erofs+verity extension image.
        try FS.makeDirectories(dir + "/ext")
        let ext = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--image", dir + "/ext/bb.img", "--verity",
                                             "--fs", "erofs", "--no-manifest"],
                                            environment: VerityDiskTests.epoch.merging(["ROOTFS_ONLY": "yes"]) { $1 }, workingDirectory: dir)
        #expect(ext.status == 0 && FS.isRegularFile(dir + "/ext/root_hash_.txt"), "\(ext.stderr)")

        // Refused before anything is written: a tar beside the disk, and two verity disks in one directory.
        let tar = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--format", "tar", "--format", "raw",
                                             "-O", dir + "/t", "--verity"], workingDirectory: dir)
        #expect(tar.status != 0 && tar.stderr.contains("--verity cannot apply to the tar output"), "\(tar.stderr)")
        #expect(!FS.exists(dir + "/t/bb.img"))
        let two = try await Fixtures.rootfs(["build", "bb", "--distros-dir", distros, "--format", "qcow2", "--format", "raw",
                                             "-O", dir + "/two", "--verity"], workingDirectory: dir)
        #expect(two.status != 0 && two.stderr.contains("same root_hash_.txt"), "\(two.stderr)")
    }
}

/// Crafted tables and root-hash files given to `rootfs boot --root-hash`: clear errors, never a trap.
@Suite struct VerityHostileInputTests {
    @Test func craftedPartitionsAndRootHashFilesAreClearErrors() throws {
        let dir = try Fixtures.temporaryDirectory("verity-hostile"); defer { FS.remove(dir) }
        // Partition 2 of an MBR reaching far beyond the 1 MiB file.
        var mbr = MBR(diskSignature: 1, partitionStartSector: 2048, partitionSectors: 8)
        mbr.secondPartition = (4096, 0xFFFF_FFF0)
        var image = [UInt8](repeating: 0, count: 1 << 20)
        image.replaceSubrange(0..<512, with: mbr.bytes)
        try writeFile(dir + "/d.img", image)
        let good = "root_hash=\(String(repeating: "a", count: 64)),salt=00,data_blocks=1,data_block_size=4096,hash_block_size=4096\n"
        try writeFile(dir + "/r.txt", Array(good.utf8))
        #expect { try VerityBoot.resolve(image: dir + "/d.img", rootHashFile: dir + "/r.txt") } throws: { error in
            (error as? RootfsError)?.message.contains("beyond the end of the file") == true
        }
        // Fields out of range or missing.
        for bad in ["root_hash=zz,salt=00,data_blocks=1,data_block_size=4096,hash_block_size=4096",
                    "root_hash=\(String(repeating: "a", count: 64)),salt=00,data_blocks=18446744073709551615,data_block_size=4096,hash_block_size=4096",
                    "root_hash=\(String(repeating: "a", count: 64)),salt=00,data_blocks=1,data_block_size=512,hash_block_size=4096",
                    "root_hash=\(String(repeating: "a", count: 64)),data_blocks=1,data_block_size=4096,hash_block_size=4096"] {
            #expect(throws: RootfsError.self, "\(bad)") {
                let p = try VerityDisk.parseRootHashFile(bad, what: "f")
                _ = try VerityDisk.table(p, dataDevice: "/dev/a", hashDevice: "/dev/b")
            }
        }
    }
}
