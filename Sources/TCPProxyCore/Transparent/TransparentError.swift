/// Why a transparent listener cannot start.
enum TransparentError: Error, Hashable, CustomStringConvertible {
    /// Setting `IP_TRANSPARENT` (or `IPV6_TRANSPARENT`) failed with `EPERM`: `--mode tproxy` and
    /// `--spoof-source` need CAP_NET_ADMIN or CAP_NET_RAW (the kernel takes either).
    case transparentNotPermitted(option: String)

    var description: String {
        switch self {
        case .transparentNotPermitted(let option):
            "\(option) needs CAP_NET_ADMIN or CAP_NET_RAW (run as root or grant one of them)"
        }
    }
}
