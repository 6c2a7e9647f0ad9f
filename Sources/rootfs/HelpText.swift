import ArgumentParser
import RootfsKit

extension CaseIterable where Self: RawRepresentable, RawValue == String {
    /// `a|b|c`, an option's value name made from the enum's cases, so the help text lists
    /// exactly what parses (HelpTextTests reads both).
    static var valueNames: String { allCases.map(\.rawValue).joined(separator: "|") }
}

extension ContainerEngine.Kind: ExpressibleByArgument {}
extension ErofsCompression: ExpressibleByArgument {}

extension BootCommand {
    /// The EXAMPLES section of `rootfs boot --help` (kept here: BootCommand's options change often).
    static let examples = """
        EXAMPLES:
          rootfs boot build/debian/debian.img --kernel vmlinuz -- cat /etc/os-release
          rootfs boot x.initrd --kernel vmlinuz -- sh -c 'exit 7'   # exits 7
          rootfs boot build/debian/debian.img --kernel vmlinuz      # time to ready
          rootfs boot out/debian.efi -- uname -a                    # a UKI, OVMF
          rootfs boot x.initrd --kernel vmlinuz --interactive       # a shell
        """
}
