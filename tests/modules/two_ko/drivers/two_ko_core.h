/* SPDX-License-Identifier: GPL-2.0 */
#ifndef TWO_KO_CORE_H
#define TWO_KO_CORE_H

int two_ko_core_hello(const char *who);

#endif
