# fake CT-CHAT package root (tests); like upstream, importing it alone imports nothing heavy
