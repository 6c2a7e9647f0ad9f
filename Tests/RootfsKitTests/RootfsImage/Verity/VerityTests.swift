import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Deterministic test bytes (SplitMix64), so a failure can be reproduced.
struct TestBytes {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(count + 8)
        while out.count < count { withUnsafeBytes(of: next()) { out += $0 } }
        return Array(out.prefix(count))
    }
}

func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

func fileBytes(_ path: String) throws -> [UInt8] { try Array(Data(contentsOf: URL(fileURLWithPath: path))) }

/// The real veritysetup (cryptsetup) run on our output; exit status and output.
private func veritysetup(_ args: [String]) async throws -> Fixtures.CLIResult {
    try await Fixtures.run(try #require(ProcessRunner.which("veritysetup"), "veritysetup is needed (apt-get install cryptsetup-bin)"), args)
}

/// The value of a `Name: value` line of veritysetup's report.
private func field(_ name: String, _ text: String) -> String? {
    for line in text.split(separator: "\n") where line.hasPrefix(name + ":") {
        return line.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces).split(separator: " ").first.map(String.init)
    }
    return nil
}

/// `rootfs verity` against veritysetup: the same tree and root hash, and veritysetup verifies ours.
@Suite(.requires(.veritysetup), .tags(.veritysetup)) struct VerityTests {
    static let salt = "5eed00112233445566778899aabbccddeeff00112233445566778899aabbccdd"

    @Test(arguments: [1, 2, 127, 128, 129, 1000, 16385])
    func sameTreeAsVeritysetupAndVerified(blocks: Int) async throws {
        let dir = try Fixtures.temporaryDirectory("verity"); defer { FS.remove(dir) }
        var gen = TestBytes(seed: UInt64(blocks))
        try writeFile(dir + "/data", gen.bytes(blocks * 4096))
        let r = try await Fixtures.rootfs(["verity", dir + "/data", "-o", dir + "/ours.hash", "--salt", Self.salt])
        #expect(r.status == 0, "\(r.stderr)")
        let root = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(root.count == 64)

        let verify = try await veritysetup(["verify", "--no-superblock", "--salt=" + Self.salt, dir + "/data", dir + "/ours.hash", root])
        #expect(verify.status == 0, "veritysetup verify refused our tree for \(blocks) blocks: \(verify.stderr)")

        let format = try await veritysetup(["format", "--no-superblock", "--hash=sha256", "--data-block-size=4096",
                                            "--hash-block-size=4096", "--salt=" + Self.salt, dir + "/data", dir + "/theirs.hash"])
        #expect(format.status == 0, "\(format.stderr)")
        #expect(field("Root hash", format.stdout) == root)
        #expect(field("Data blocks", format.stdout) == String(blocks))
        #expect(try fileBytes(dir + "/ours.hash") == fileBytes(dir + "/theirs.hash"))
    }

    @Test func oneFlippedByteFailsVerification() async throws {
        let dir = try Fixtures.temporaryDirectory("verity-flip"); defer { FS.remove(dir) }
        var gen = TestBytes(seed: 7)
        var data = gen.bytes(300 * 4096)
        try writeFile(dir + "/data", data)
        let r = try await Fixtures.rootfs(["verity", dir + "/data", "-o", dir + "/h", "--salt", Self.salt])
        #expect(r.status == 0, "\(r.stderr)")
        let root = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try await veritysetup(["verify", "--no-superblock", "--salt=" + Self.salt, dir + "/data", dir + "/h", root]).status == 0)

        data[200 * 4096 + 17] ^= 0x01
        try writeFile(dir + "/data", data)
        let bad = try await veritysetup(["verify", "--no-superblock", "--salt=" + Self.salt, dir + "/data", dir + "/h", root])
        #expect(bad.status != 0, "veritysetup accepted data with a flipped byte")
        // And the wrong salt with the right data fails too.
        data[200 * 4096 + 17] ^= 0x01
        try writeFile(dir + "/data", data)
        let otherSalt = try await veritysetup(["verify", "--no-superblock", "--salt=00", dir + "/data", dir + "/h", root])
        #expect(otherSalt.status != 0)
    }

    @Test func partialBlockIsRefusedClearly() async throws {
        let dir = try Fixtures.temporaryDirectory("verity-partial"); defer { FS.remove(dir) }
        try writeFile(dir + "/data", [UInt8](repeating: 1, count: 4096 * 3 + 100))
        let r = try await Fixtures.rootfs(["verity", dir + "/data", "-o", dir + "/h", "--salt", "00"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("not a whole number of 4096-byte blocks"), "\(r.stderr)")
        #expect(r.stderr.contains("hint:"))
        #expect(!FS.exists(dir + "/h"))
        let badSalt = try await Fixtures.rootfs(["verity", dir + "/data", "-o", dir + "/h", "--salt", "abc"])
        #expect(badSalt.status != 0 && badSalt.stderr.contains("salt"), "\(badSalt.stderr)")
    }

    /// A partition inside a disk image: --offset/--length, checked against veritysetup on the partition's bytes.
    @Test func byteRangeOfADisk() async throws {
        let dir = try Fixtures.temporaryDirectory("verity-range"); defer { FS.remove(dir) }
        var gen = TestBytes(seed: 11)
        let head = gen.bytes(1 << 20), partition = gen.bytes(1 << 21), tail = gen.bytes(12345)
        try writeFile(dir + "/disk", head + partition + tail)
        try writeFile(dir + "/part", partition)
        let r = try await Fixtures.rootfs(["verity", dir + "/disk", "--offset", "1048576", "--length", "2097152",
                                           "-o", dir + "/h", "--salt", Self.salt])
        #expect(r.status == 0, "\(r.stderr)")
        let root = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try await veritysetup(["verify", "--no-superblock", "--salt=" + Self.salt, dir + "/part", dir + "/h", root]).status == 0)
        let beyond = try await Fixtures.rootfs(["verity", dir + "/disk", "--offset", "1048576", "--length", "4194304", "-o", dir + "/h2"])
        #expect(beyond.status != 0 && beyond.stderr.contains("bytes after offset"), "\(beyond.stderr)")
    }

    /// Without --salt, SOURCE_DATE_EPOCH fixes the salt: the same root hash twice; Kata's line is written.
    @Test func reproducibleSaltAndKataParameters() async throws {
        let dir = try Fixtures.temporaryDirectory("verity-epoch"); defer { FS.remove(dir) }
        var gen = TestBytes(seed: 3)
        try writeFile(dir + "/data", gen.bytes(129 * 4096))
        var roots: [String] = []
        for (name, epoch) in [("a", "1700000000"), ("b", "1700000000"), ("c", "1700000001")] {
            let r = try await Fixtures.rootfs(["verity", dir + "/data", "-o", dir + "/\(name).hash", "--kata-params", dir + "/\(name).txt"],
                                              environment: ["SOURCE_DATE_EPOCH": epoch])
            #expect(r.status == 0, "\(r.stderr)")
            roots.append(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        #expect(roots[0] == roots[1])
        #expect(roots[0] != roots[2])
        let line = try String(contentsOfFile: dir + "/a.txt", encoding: .utf8)
        #expect(line.hasSuffix("\n") && line.split(separator: "\n").count == 1)
        var values: [String: String] = [:]
        for pair in line.trimmingCharacters(in: .newlines).split(separator: ",") {
            let kv = pair.split(separator: "=", maxSplits: 1).map(String.init)
            values[kv[0]] = kv[1]
        }
        #expect(Array(values.keys).sorted() == ["data_block_size", "data_blocks", "hash_block_size", "root_hash", "salt"])
        #expect(values["root_hash"] == roots[0] && values["data_blocks"] == "129")
        #expect(values["data_block_size"] == "4096" && values["hash_block_size"] == "4096")
        // The line's own values open the data with veritysetup, as Kata's runtime does.
        let salt = try #require(values["salt"])
        #expect(salt.count == 64)
        let format = try await veritysetup(["format", "--no-superblock", "--salt=" + salt, dir + "/data", dir + "/v.hash"])
        #expect(field("Root hash", format.stdout) == roots[0])
    }

    /// Kata's measured rootfs layout: the tree goes into a second partition of the same disk
    /// (library entry point); veritysetup reads it there with --hash-offset.
    @Test func treeIntoAPartitionOfTheSameDisk() async throws {
        let dir = try Fixtures.temporaryDirectory("verity-same"); defer { FS.remove(dir) }
        var gen = TestBytes(seed: 23)
        let partition = gen.bytes(300 * 4096)
        let dataOffset: Int64 = 1 << 20, hashOffset: Int64 = 3 << 20
        try writeFile(dir + "/disk", [UInt8](repeating: 0, count: 1 << 20) + partition + [UInt8](repeating: 0xAA, count: 2 << 20))
        try writeFile(dir + "/part", partition)
        let salt = try VerityHashTree.parseSalt(Self.salt)
        let disk = try OwnedFileDescriptor(path: dir + "/disk", flags: O_RDWR)
        let p = try VerityHashTree.write(data: disk, offset: dataOffset, length: Int64(partition.count), hash: disk, hashOffset: hashOffset, salt: salt)
        #expect(p.dataBlocks == 300 && p.hashOffset == hashOffset && p.hashSize == 4 * 4096)
        // The data partition is untouched; the bytes after the tree too.
        let after = try fileBytes(dir + "/disk")
        #expect(Array(after[Int(dataOffset)..<(Int(dataOffset) + partition.count)]) == partition)
        #expect(after[Int(hashOffset + p.hashSize)] == 0xAA)
        let verify = try await veritysetup(["verify", "--no-superblock", "--salt=" + Self.salt, "--hash-offset=\(hashOffset)",
                                            dir + "/part", dir + "/disk", p.rootHash])
        #expect(verify.status == 0, "\(verify.stderr)")
        // A tree that would land on the data it protects is refused before anything is written.
        #expect(throws: RootfsError.self) {
            try VerityHashTree.write(data: disk, offset: dataOffset, length: Int64(partition.count), hash: disk,
                                     hashOffset: dataOffset + 4096, salt: salt)
        }
        #expect(try fileBytes(dir + "/disk") == after)
    }

    /// libnettle's SHA-256 (found in the process through libarchive) and the Swift one agree on
    /// every block, for empty, short and long salts; on Debian the fast one is the one in use.
    @Test func nettleAndSwiftBackendsAgree() throws {
        let nettle = try #require(NettleSHA256.shared, "libnettle.so.8 should be in the process through libarchive")
        guard case .nettle = VerityHashTree.backend else { Issue.record("the verity writer does not use libnettle"); return }
        var gen = TestBytes(seed: 29)
        let data = gen.bytes(200 * 4096)
        for salt in [[], [0x42], gen.bytes(32), gen.bytes(100), gen.bytes(256)] {
            var fast = [UInt8](repeating: 0, count: 200 * 32), slow = fast
            data.withUnsafeBytes { d in
                fast.withUnsafeMutableBytes { VerityHashTree.hashBlocks(d, into: $0, salt: salt, backend: .nettle(nettle)) }
                slow.withUnsafeMutableBytes { VerityHashTree.hashBlocks(d, into: $0, salt: salt, backend: .swift) }
            }
            #expect(fast == slow, "salt of \(salt.count) bytes")
            var one = SHA256()
            one.update(salt)
            one.update(Array(data[(199 * 4096)...]))
            #expect(Array(slow[(199 * 32)...]) == one.finalize())
        }
    }

    @Test func layoutMatchesTheKernelsLevels() throws {
        #expect(try VerityHashTree.levels(dataBlocks: 1).isEmpty)
        #expect(try VerityHashTree.levels(dataBlocks: 128).map(\.count) == [1])
        let l = try VerityHashTree.levels(dataBlocks: 129)
        #expect(l.map(\.count) == [2, 1] && l.map(\.start) == [1, 0])
        #expect(try VerityHashTree.levels(dataBlocks: 128 * 128 + 1).map(\.count) == [129, 2, 1])
        #expect(try VerityHashTree.hashSize(dataBlocks: 262_144) == Int64(2048 + 16 + 1) * 4096)
        #expect(throws: RootfsError.self) { try VerityHashTree.levels(dataBlocks: 0) }
        #expect(try VerityHashTree.levels(dataBlocks: .max).count == 10)
    }
}
