import Foundation
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Small distros written by tests into a temporary --distros-dir. Their hooks
/// run for real (bash, busybox-static) and need no network.
enum TestDistros {
    /// A distros directory holding the given distros (name -> (config.sh, rootfs_lib.sh or nil)).
    static func make(_ distros: [String: (config: String, lib: String?)]) throws -> String {
        let dir = try Fixtures.temporaryDirectory("distros")
        for (name, files) in distros {
            try FS.makeDirectories(dir + "/" + name)
            try files.config.write(toFile: dir + "/\(name)/config.sh", atomically: true, encoding: .utf8)
            if let lib = files.lib {
                try lib.write(toFile: dir + "/\(name)/rootfs_lib.sh", atomically: true, encoding: .utf8)
            }
        }
        return dir
    }

    /// A guest made of busybox-static: a shell and the usual applets, in well under a second.
    static let busyboxConfig = """
    OS_NAME=busybox
    OS_VERSION=${OS_VERSION:-1}
    INIT_PROCESS=agent
    PACKAGES=""
    HOST_TOOLS="busybox"
    """

    static let busyboxLib = #"""
    build_rootfs() {
        local root=$1
        info "populating $root from busybox-static"
        mkdir -p "$root/bin" "$root/usr/bin" "$root/etc" "$root/tmp"
        cp "$(command -v busybox)" "$root/bin/busybox"
        local applet
        for applet in sh cat echo ls mount; do ln -s busybox "$root/bin/$applet"; done
        printf 'NAME=busybox\n' > "$root/etc/os-release"
        for p in ${EXTRA_PKGS:-}; do printf '%s\n' "$p" >> "$root/etc/extra-packages"; done
    }
    """#
}
