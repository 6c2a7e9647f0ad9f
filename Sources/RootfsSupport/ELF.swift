import Foundation

/// Just enough of ELF to vet an agent binary.
public enum ELF {
    /// Whether the file starts with the ELF magic.
    public static func isELF(_ path: String) -> Bool {
        guard let header = readPrefix(path, count: 4) else { return false }
        return header == [0x7f, 0x45, 0x4c, 0x46]
    }

    /// Whether a 64-bit little-endian ELF has no program interpreter (fully static).
    public static func isStatic(_ path: String) -> Bool {
        guard let h = readPrefix(path, count: 64), h.count == 64, h[0..<4] == [0x7f, 0x45, 0x4c, 0x46],
              h[4] == 2, h[5] == 1 else { return false }
        func u16(_ o: Int, _ b: [UInt8]) -> Int { Int(b[o]) | Int(b[o + 1]) << 8 }
        func u64(_ o: Int, _ b: [UInt8]) -> Int { (0..<8).reduce(0) { $0 | Int(b[o + $1]) << (8 * $1) } }
        let phoff = u64(32, h), phentsize = u16(54, h), phnum = u16(56, h)
        guard let table = readPrefix(path, count: phoff + phentsize * phnum) else { return false }
        for i in 0..<phnum where u16(phoff + i * phentsize, table) == 3 { return false } // PT_INTERP
        return true
    }

    /// e_machine of an ELF file (either byte order), or nil when it is not ELF.
    public static func machine(_ path: String) -> UInt16? {
        guard let h = readPrefix(path, count: 20) else { return nil }
        return machine(header: h)
    }

    /// e_machine from the first 20 bytes of a file.
    public static func machine(header h: [UInt8]) -> UInt16? {
        guard h.count >= 20, h[0..<4] == [0x7f, 0x45, 0x4c, 0x46] else { return nil }
        switch h[5] {
        case 1: return UInt16(h[18]) | UInt16(h[19]) << 8  // little-endian
        case 2: return UInt16(h[18]) << 8 | UInt16(h[19])  // big-endian (s390x)
        default: return nil
        }
    }

    /// A readable name for an e_machine: ours by their uname -m names, others by number.
    public static func machineName(_ machine: UInt16) -> String {
        Architecture(elfMachine: machine)?.rawValue ?? "ELF machine \(machine)"
    }

    private static func readPrefix(_ path: String, count: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, count) }
        return n < 0 ? nil : Array(bytes.prefix(n))
    }
}
