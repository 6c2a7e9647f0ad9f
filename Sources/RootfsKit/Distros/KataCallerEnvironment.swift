import Foundation

/// The variables Kata osbuilder's `rootfs.sh` has set when it sources a distro's
/// config.sh and runs its build_rootfs(), given to every hook by rootfs (the
/// bash side, defaults and lib.sh functions, is `KataLib.text`).
public enum KataCallerEnvironment {
    /// Kata's `script_dir`: the directory holding the distro directories
    /// (Kata's rootfs-builder/), so a distro can source a sibling's files.
    public static func scriptDirectory(of distro: Distro) -> String {
        FS.parent(distro.directory)
    }

    /// script_dir, CONFIG_SH and LIB_SH. Paths are absolute, so a container build
    /// maps script_dir to its mount like any other path.
    public static func variables(for distro: Distro) -> [String: String] {
        ["script_dir": scriptDirectory(of: distro), "CONFIG_SH": KataLib.configFileName, "LIB_SH": KataLib.libraryFileName]
    }

}
