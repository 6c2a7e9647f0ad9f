// The root partition by its type, as the Discoverable Partitions Specification
// (systemd-gpt-auto-generator) finds it: the contract between the EFI disks rootfs
// writes (EFIDisk types the root partition) and the agent's stage-1 (`rootfs-agent
// gpt-root`), which reads the GPT of a guest disk. The table is a stranger's bytes:
// every field is checked (signature, sizes, CRCs, bounds, with overflow-checked
// arithmetic) and a table that does not add up is refused, never half-trusted.
// Pure Swift, no Foundation: the static agent links it, and the tests run it on
// hostile tables.

public enum DiscoverableRoot {
    /// "Root Partition" type GUIDs of the specification, by `uname -m` machine.
    public static let rootTypes: [String: String] = [
        "x86_64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        "aarch64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        "i686": "44479540-F297-41B2-9AF7-D131D5F0458A",
        "ppc64le": "C31C45E6-3F39-412E-80FB-4809C4980599",
        "s390x": "5EEAD9A9-FE09-4A1E-A1D7-520D00531306",
        "riscv64": "72EC70A6-CF74-40E6-BD49-4BDA08E8F224",
    ]

    /// The largest partition entry array read (the specification's minimum is 16 KiB;
    /// real tables stay far below this).
    public static let maxEntryArrayBytes = 1 << 20

    /// Partition attribute bits of the specification.
    static let readOnlyFlag: UInt64 = 1 << 60
    static let noAutoFlag: UInt64 = 1 << 63

    public struct Found: Equatable, Sendable {
        /// 1-based, as the kernel numbers partitions (PARTN).
        public var number: Int
        /// Attribute bit 60: mount read-only.
        public var readOnly: Bool
        public init(number: Int, readOnly: Bool) {
            self.number = number
            self.readOnly = readOnly
        }
    }

    /// The root partition of a disk of `diskBytes` bytes in `sectorSize`-byte sectors,
    /// read through `read(offset, count)` (nil: could not read). nil when the disk has no
    /// GPT; an error text when its GPT is damaged or hostile, or names the root twice.
    public static func find(rootType: String, sectorSize: Int, diskBytes: UInt64,
                            read: (UInt64, Int) -> [UInt8]?) -> Result<Found?, GPTError> {
        guard [512, 1024, 2048, 4096].contains(sectorSize) else { return .failure(GPTError("sector size \(sectorSize) is not one GPT uses")) }
        let sector = UInt64(sectorSize)
        guard diskBytes >= 3 * sector, let header = read(sector, sectorSize), header.count == sectorSize else { return .success(nil) }
        guard Array(header[0..<8]) == Array("EFI PART".utf8) else { return .success(nil) }
        let headerSize = Int(le32(header, 12))
        guard headerSize >= 92, headerSize <= sectorSize else { return .failure(GPTError("header size \(headerSize) is outside 92...\(sectorSize)")) }
        var zeroed = Array(header[0..<headerSize])
        for i in 16..<20 { zeroed[i] = 0 }
        guard crc32(zeroed) == le32(header, 16) else { return .failure(GPTError("the header CRC does not match")) }
        let diskSectors = diskBytes / sector
        guard le64(header, 24) == 1 else { return .failure(GPTError("the header does not say it is at LBA 1")) }
        let firstUsable = le64(header, 40), lastUsable = le64(header, 48)
        guard firstUsable <= lastUsable, lastUsable < diskSectors else {
            return .failure(GPTError("usable sectors \(firstUsable)...\(lastUsable) do not fit a disk of \(diskSectors) sectors"))
        }
        let entriesLBA = le64(header, 72)
        let count = Int(le32(header, 80)), entrySize = Int(le32(header, 84))
        guard entrySize >= 128, entrySize % 8 == 0 else { return .failure(GPTError("partition entry size \(entrySize) is not a multiple of 8 of at least 128")) }
        let (arrayBytes, overflow) = count.multipliedReportingOverflow(by: entrySize)
        guard !overflow, arrayBytes <= maxEntryArrayBytes else {
            return .failure(GPTError("\(count) entries of \(entrySize) bytes exceed \(maxEntryArrayBytes) bytes"))
        }
        let (arrayOffset, o1) = entriesLBA.multipliedReportingOverflow(by: sector)
        let (arrayEnd, o2) = arrayOffset.addingReportingOverflow(UInt64(arrayBytes))
        guard entriesLBA >= 2, !o1, !o2, arrayEnd <= diskBytes else {
            return .failure(GPTError("the partition entries at LBA \(entriesLBA) lie outside the disk"))
        }
        guard let entries = read(arrayOffset, arrayBytes), entries.count == arrayBytes else { return .failure(GPTError("cannot read the partition entries")) }
        guard crc32(entries) == le32(header, 88) else { return .failure(GPTError("the partition entries' CRC does not match")) }

        let wanted = rootType.uppercased()
        var found: Found?
        for index in 0..<count {
            let e = Array(entries[(index * entrySize)..<(index * entrySize + 128)])
            guard guidText(Array(e[0..<16])) == wanted else { continue }
            let first = le64(e, 32), last = le64(e, 40), attributes = le64(e, 48)
            guard first <= last, first >= firstUsable, last <= lastUsable else {
                return .failure(GPTError("root partition \(index + 1) (sectors \(first)...\(last)) lies outside the usable sectors"))
            }
            if attributes & noAutoFlag != 0 { continue }
            if let other = found {
                return .failure(GPTError("partitions \(other.number) and \(index + 1) both have the root type"))
            }
            found = Found(number: index + 1, readOnly: attributes & readOnlyFlag != 0)
        }
        return .success(found)
    }

    public struct GPTError: Error, Equatable, Sendable {
        public var text: String
        public init(_ text: String) { self.text = text }
    }

    /// A GUID as text from its on-disk bytes (the first three fields little-endian).
    public static func guidText(_ b: [UInt8]) -> String {
        let order = [3, 2, 1, 0, -1, 5, 4, -1, 7, 6, -1, 8, 9, -1, 10, 11, 12, 13, 14, 15]
        let digits = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for i in order {
            if i < 0 { out.append(45); continue }
            out.append(digits[Int(b[i] >> 4)])
            out.append(digits[Int(b[i] & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func le32(_ b: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) }
    }

    static func le64(_ b: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) }
    }

    /// CRC-32 (IEEE, reflected), the GPT's checksum.
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = (crc >> 1) ^ (0xEDB8_8320 & (0 &- (crc & 1))) }
        }
        return ~crc
    }
}
