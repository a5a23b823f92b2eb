"""Blue/green deploys: immutable releases, a health gate, an atomic proxy switch, a warm previous color."""
