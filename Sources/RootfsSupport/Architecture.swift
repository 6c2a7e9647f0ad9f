import Foundation

/// The guest architectures Kata ships, by the kernel's `uname -m` names (Kata's
/// `ARCH`). Each distro family has its own name for them; ELF headers have a number.
public enum Architecture: String, CaseIterable, Sendable, Codable {
    case x86_64, aarch64, s390x, ppc64le

    /// Debian's and Ubuntu's name (`dpkg --print-architecture`, mmdebstrap --architectures, Kata's DEB_ARCH).
    public var debianName: String {
        switch self {
        case .x86_64: "amd64"
        case .aarch64: "arm64"
        case .s390x: "s390x"
        case .ppc64le: "ppc64el"
        }
    }

    /// RPM's (dnf --forcearch) and Alpine's (apk --arch) name: the kernel's.
    public var rpmName: String { rawValue }

    /// e_machine in an ELF header of this architecture.
    public var elfMachine: UInt16 {
        switch self {
        case .x86_64: 62    // EM_X86_64
        case .aarch64: 183  // EM_AARCH64
        case .s390x: 22     // EM_S390
        case .ppc64le: 21   // EM_PPC64
        }
    }

    /// qemu-user's and binfmt-support's name (qemu-aarch64, /proc/sys/fs/binfmt_misc/qemu-aarch64).
    public var qemuUserName: String { rawValue }

    /// The architecture of an ELF e_machine, if it is one of ours.
    public init?(elfMachine: UInt16) {
        guard let found = Self.allCases.first(where: { $0.elfMachine == elfMachine }) else { return nil }
        self = found
    }

    /// The host's, when it is one of ours.
    public static var host: Architecture? { Architecture(rawValue: hostArchitecture()) }

    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// A name from a flag or the environment; Debian's names are taken too (arm64 is aarch64).
    public static func parse(_ text: String, option: String) throws -> Architecture {
        if let found = Architecture(rawValue: text) ?? allCases.first(where: { $0.debianName == text }) { return found }
        throw RootfsError("\(option) \(text) is not an architecture rootfs knows",
                          hint: "use one of \(names) (the kernel's uname -m names, as Kata's ARCH)")
    }
}
