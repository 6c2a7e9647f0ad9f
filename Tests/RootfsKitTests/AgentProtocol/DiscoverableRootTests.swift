import AgentProtocol
import Testing
@testable import RootfsImage
@testable import RootfsSupport

/// The stage-1 agent's root finder on the GPT that EFIDisk's GPT writer produces, then on the
/// same table made hostile field by field (the CRCs recomputed, so each deeper check is reached).
struct DiscoverableRootTests {
    static let sectors: UInt64 = 8192
    static let rootType = DiscoverableRoot.rootTypes["x86_64"]!

    /// A 4 MiB disk: ESP at 1 MiB, the x86-64 root after it, as EFIDisk lays them out.
    static func disk(rootType: String = EFIDisk.rootX86_64Type) -> [UInt8] {
        var gpt = GPT(diskSectors: sectors, firstSector: 2048, lastSector: 4095, diskGUID: "11111111-2222-4333-8444-555555555555",
                      partitionGUID: "21111111-2222-4333-8444-555555555555", partitionName: "ESP")
        gpt.typeGUID = EFIDisk.espType
        gpt.morePartitions = [GPT.Partition(typeGUID: rootType, partitionGUID: "31111111-2222-4333-8444-555555555555",
                                            firstSector: 4096, lastSector: 8000, name: "root-x86-64")]
        var bytes = [UInt8](repeating: 0, count: Int(sectors) * 512)
        for (lba, sector) in gpt.sectors { bytes.replaceSubrange(Int(lba) * 512..<(Int(lba) * 512 + sector.count), with: sector) }
        return bytes
    }

    static func find(_ disk: [UInt8], sectorSize: Int = 512, unreadable: ClosedRange<UInt64>? = nil) -> Result<DiscoverableRoot.Found?, DiscoverableRoot.GPTError> {
        DiscoverableRoot.find(rootType: rootType, sectorSize: sectorSize, diskBytes: UInt64(disk.count)) { offset, count in
            if let unreadable, unreadable.contains(offset) { return nil }
            guard offset < UInt64(disk.count), UInt64(disk.count) - offset >= UInt64(count) else { return nil }
            return Array(disk[Int(offset)..<(Int(offset) + count)])
        }
    }

    static func put(_ disk: inout [UInt8], _ at: Int, _ value: UInt64, bytes: Int) {
        for i in 0..<bytes { disk[at + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    /// Rewrites the primary header's CRCs after a change (entries first, then the header).
    static func fixCRCs(_ disk: inout [UInt8]) {
        put(&disk, 512 + 88, UInt64(CRC32.checksum(Array(disk[1024..<(1024 + 128 * 128)]))), bytes: 4)
        for i in 16..<20 { disk[512 + i] = 0 }
        put(&disk, 512 + 16, UInt64(CRC32.checksum(Array(disk[512..<(512 + 92)]))), bytes: 4)
    }

    static func refused(_ disk: [UInt8], _ words: String, unreadable: ClosedRange<UInt64>? = nil) -> Bool {
        if case .failure(let error) = find(disk, unreadable: unreadable) { return error.text.contains(words) }
        return false
    }

    @Test func findsTheRootEFIDiskWritesByItsType() throws {
        #expect(Self.rootType == EFIDisk.rootX86_64Type, "the writer and the stage-1 agree on the type")
        #expect(try Self.find(Self.disk()).get() == DiscoverableRoot.Found(number: 2, readOnly: false))
        // Another architecture's root type is not this machine's root; no GPT at all is no root, not an error.
        #expect(try Self.find(Self.disk(rootType: DiscoverableRoot.rootTypes["aarch64"]!)).get() == nil)
        #expect(try Self.find([UInt8](repeating: 0, count: 1 << 20)).get() == nil)
        #expect(try Self.find([UInt8](repeating: 0, count: 1024)).get() == nil)
        // Attribute bits: 60 read-only, 63 "do not mount automatically".
        var readOnly = Self.disk()
        Self.put(&readOnly, 1024 + 128 + 48, 1 << 60, bytes: 8); Self.fixCRCs(&readOnly)
        #expect(try Self.find(readOnly).get() == DiscoverableRoot.Found(number: 2, readOnly: true))
        var noAuto = Self.disk()
        Self.put(&noAuto, 1024 + 128 + 48, 1 << 63, bytes: 8); Self.fixCRCs(&noAuto)
        #expect(try Self.find(noAuto).get() == nil)
    }

    @Test func refusesHostileTables() {
        var d = Self.disk(); d[512 + 20] ^= 1
        #expect(Self.refused(d, "header CRC"))
        d = Self.disk(); d[1024 + 128 + 100] ^= 1
        #expect(Self.refused(d, "entries' CRC"))
        d = Self.disk(); Self.put(&d, 512 + 12, 0xFFFF_FFFF, bytes: 4)
        #expect(Self.refused(d, "header size"))
        d = Self.disk(); Self.put(&d, 512 + 24, 7, bytes: 8); Self.fixCRCs(&d)
        #expect(Self.refused(d, "LBA 1"))
        d = Self.disk(); Self.put(&d, 512 + 84, 100, bytes: 4); Self.fixCRCs(&d)
        #expect(Self.refused(d, "entry size"))
        // count * size overflows Int32 and the 1 MiB cap.
        d = Self.disk(); Self.put(&d, 512 + 80, 0xFFFF_FFFF, bytes: 4); Self.put(&d, 512 + 84, 0xFFFF_FFF8, bytes: 4); Self.fixCRCs(&d)
        #expect(Self.refused(d, "exceed"))
        // The entries' LBA times the sector size overflows UInt64; or lies past the end.
        d = Self.disk(); Self.put(&d, 512 + 72, UInt64.max / 2, bytes: 8); Self.fixCRCs(&d)
        #expect(Self.refused(d, "outside the disk"))
        d = Self.disk(); Self.put(&d, 512 + 72, Self.sectors - 2, bytes: 8); Self.fixCRCs(&d)
        #expect(Self.refused(d, "outside the disk"))
        d = Self.disk(); Self.put(&d, 512 + 48, UInt64.max, bytes: 8); Self.fixCRCs(&d)
        #expect(Self.refused(d, "usable sectors"))
        // The root partition itself: ending before it starts, or past the usable sectors.
        d = Self.disk(); Self.put(&d, 1024 + 128 + 40, 100, bytes: 8); Self.fixCRCs(&d)
        #expect(Self.refused(d, "outside the usable sectors"))
        d = Self.disk(); Self.put(&d, 1024 + 128 + 40, UInt64.max, bytes: 8); Self.fixCRCs(&d)
        #expect(Self.refused(d, "outside the usable sectors"))
        // Two roots: which one to boot is not guessed.
        d = Self.disk(); d.replaceSubrange((1024 + 256)..<(1024 + 256 + 16), with: Array(d[(1024 + 128)..<(1024 + 144)]))
        Self.put(&d, 1024 + 256 + 32, 8001, bytes: 8); Self.put(&d, 1024 + 256 + 40, 8010, bytes: 8); Self.fixCRCs(&d)
        #expect(Self.refused(d, "both have the root type"))
        // A disk that stops answering at the entries; a sector size GPT does not use.
        #expect(Self.refused(Self.disk(), "cannot read", unreadable: 1024...1024))
        if case .failure(let error) = Self.find(Self.disk(), sectorSize: 3) { #expect(error.text.contains("sector size")) } else { Issue.record("sector size 3 accepted") }
    }

    /// Random damage to the header and the first entries, CRCs recomputed or not: every table is
    /// answered (found, none, or refused), none traps. Seeded, so a failure repeats.
    @Test func randomDamageNeverTraps() {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return state >> 33
        }
        let clean = Self.disk()
        var found = 0, refused = 0
        for round in 0..<1000 {
            var d = clean
            for _ in 0..<(1 + Int(next() % 6)) {
                let at = next() % 2 == 0 ? 512 + Int(next() % 92) : 1024 + Int(next() % 512)
                d[at] = UInt8(truncatingIfNeeded: next())
            }
            if round % 3 != 0 { Self.fixCRCs(&d) }
            switch Self.find(d) {
            case .success(let root?): found += 1; #expect(root.number >= 1 && root.number <= 128)
            case .success(nil): continue
            case .failure: refused += 1
            }
        }
        // The damage reaches both outcomes: some tables still hold the root, many are refused.
        #expect(found > 0 && refused > 0, "found \(found), refused \(refused)")
    }
}
